"""Shared fixtures: a tiny config, a tiny tokenizer trained on text the tests write, a tiny model, a CLI runner.

Nothing here downloads or reads ../shared: every byte is made by the test session.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from pocketgpt.config import ModelConfig
from pocketgpt.model import GPT
from pocketgpt.tokenizer import Tokenizer

WORDS = (
    "the model reads tokens and predicts the next one attention mixes values from earlier positions "
    "a residual stream carries information through every block while layer norms keep it steady "
    "python code def return import class for while if else print list dict"
).split()


def make_text(n_sentences: int = 400, seed: int = 0) -> str:
    """A few tens of KB of deterministic, learnable text (with a little Unicode)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
        s = " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])
        if i % 37 == 0:
            s += " Café déjà vu — 中文 测试 🙂."
        out.append(s)
        if i % 8 == 7:
            out.append("\n\n")
    return " ".join(out)


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory):
    """Kernel timings (generate/kernels.py) go to a folder of this session, not the user's ~/.cache."""
    os.environ["POCKETGPT_CACHE"] = str(tmp_path_factory.mktemp("pocketgpt-cache"))


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_text()


@pytest.fixture
def corpus_file(tmp_path, corpus_text):
    p = tmp_path / "corpus.txt"
    p.write_text(corpus_text, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_tokenizer(corpus_text) -> Tokenizer:
    return Tokenizer.train([corpus_text], vocab_size=320)


@pytest.fixture
def tiny_cfg(tiny_tokenizer) -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tiny_tokenizer.n_vocab)


@pytest.fixture
def tiny_model(tiny_cfg) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_cfg).eval()


@pytest.fixture
def run_cli(capsys):
    """Run `pocketgpt ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from pocketgpt.cli.main import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


TINY_TRAIN_FLAGS = [
    "--model.n_layer",
    "2",
    "--model.n_head",
    "2",
    "--model.n_embd",
    "32",
    "--model.block_size",
    "32",
    "--tokenizer.vocab_size",
    "300",
    "--train.batch_size",
    "4",
    "--train.max_steps",
    "6",
    "--train.warmup_steps",
    "2",
    "--train.eval_every",
    "3",
    "--train.save_every",
    "3",
    "--train.eval_tokens",
    "512",
    "--train.samples",
    "0",
    "--train.log_every",
    "1",
    "--train.dtype",
    "float32",
]


class OneBatch:
    """A batch source for the training loop that returns the same batch every step."""

    def __init__(self, x, y):
        self.x, self.y, self.block_size = x, y, x.shape[1]

    def get(self, step, micro=0):
        return self.x, self.y

    def state_dict(self):
        return {}
