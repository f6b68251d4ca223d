"""Checkpoints: exact round trip, atomic saves that survive SIGKILL, and a train state that is never executed."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pocketgpt.checkpoint import LATEST, load_checkpoint, load_train_state, resolve, save_checkpoint
from pocketgpt.config import ModelConfig
from pocketgpt.errors import UserError
from pocketgpt.model import GPT

REPO = Path(__file__).resolve().parents[1]


def _logits(model, tokenizer, text="The model reads tokens and predicts the next one."):
    ids = torch.tensor([tokenizer.encode(text)[: model.config.block_size]])
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_round_trip(tmp_path, tiny_cfg, tiny_tokenizer, tie):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**tiny_cfg.__dict__, "tie_embeddings": tie})).eval()
    state = {"step": 7, "optimizer": {"m": torch.randn(3, 4)}, "rng": [1, 2, 3]}
    path = save_checkpoint(
        tmp_path, "ckpt-0000007", model, tiny_tokenizer, step=7, train_state=state, extra={"note": "hello"}
    )
    assert path == tmp_path / "ckpt-0000007"
    assert (tmp_path / LATEST).read_text().strip() == "ckpt-0000007"

    for where in (tmp_path, path):  # run folder (via LATEST) or the checkpoint itself
        ckpt = load_checkpoint(where)
        assert ckpt.path == path
        assert ckpt.meta["step"] == 7 and ckpt.meta["note"] == "hello"
        assert ckpt.model.config == model.config
        assert not ckpt.model.training
        assert torch.equal(_logits(ckpt.model, tiny_tokenizer), _logits(model, tiny_tokenizer))
        for k, v in model.state_dict().items():
            assert torch.equal(ckpt.model.state_dict()[k], v), k
        tok = ckpt.tokenizer
        assert tok.fingerprint() == tiny_tokenizer.fingerprint() and tok.n_vocab == tiny_tokenizer.n_vocab
        text = "Café déjà vu — 中文 🙂 def return"
        assert tok.encode(text) == tiny_tokenizer.encode(text) and tok.decode(tok.encode(text)) == text
    if tie:  # one copy of the shared matrix on disk
        from safetensors.torch import load_file

        assert "lm_head.weight" not in load_file(str(path / "model.safetensors"))
        assert ckpt.model.lm_head.weight.data_ptr() == ckpt.model.transformer.wte.weight.data_ptr()

    loaded = load_train_state(tmp_path)
    assert loaded["step"] == 7 and torch.equal(loaded["optimizer"]["m"], state["optimizer"]["m"])


def test_newer_checkpoint_replaces_older(tmp_path, tiny_model, tiny_tokenizer):
    save_checkpoint(tmp_path, "ckpt-0000001", tiny_model, tiny_tokenizer, step=1)
    save_checkpoint(tmp_path, "ckpt-0000002", tiny_model, tiny_tokenizer, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "ckpt-0000002"]
    assert load_checkpoint(tmp_path).meta["step"] == 2
    assert load_train_state(tmp_path) is None  # saved without one
    save_checkpoint(tmp_path, "ckpt-0000002", tiny_model, tiny_tokenizer, step=3)  # same name again
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "ckpt-0000002"]
    assert load_checkpoint(tmp_path).meta["step"] == 3


def test_parked_folder_is_used_when_a_same_name_save_was_killed(tmp_path, tiny_model, tiny_tokenizer):
    """A kill between parking ckpt-X (to overwrite it) and moving the new ckpt-X in leaves LATEST loadable."""
    save_checkpoint(tmp_path, "ckpt-0000005", tiny_model, tiny_tokenizer, step=5)
    os.replace(tmp_path / "ckpt-0000005", tmp_path / ".ckpt-0000005.old")  # the state at that moment
    assert resolve(tmp_path) == tmp_path / ".ckpt-0000005.old"
    assert load_checkpoint(tmp_path).meta["step"] == 5
    save_checkpoint(tmp_path, "ckpt-0000006", tiny_model, tiny_tokenizer, step=6)  # the next save tidies up
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "ckpt-0000006"]


CHILD = textwrap.dedent("""
    import sys, torch
    from pocketgpt.checkpoint import save_checkpoint
    from pocketgpt.config import ModelConfig
    from pocketgpt.model import GPT
    from pocketgpt.tokenizer import Tokenizer

    run_dir, same_name = sys.argv[1], sys.argv[2] == "same"
    tok = Tokenizer.train(["the model reads tokens and predicts the next one " * 50], vocab_size=270)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=384, block_size=64, vocab_size=tok.n_vocab))  # ~7M params
    state = {"optimizer": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            model.transformer.wte.weight[0, 0] = step                 # the saved weights say which step they are
        name = "ckpt-latest" if same_name else f"ckpt-{step:07d}"
        save_checkpoint(run_dir, name, model, tok, step=step, train_state={**state, "step": step})
        print(step, flush=True)
""")


def test_sigkill_while_saving_always_leaves_a_loadable_checkpoint(tmp_path):
    """Children save in a loop and are killed at random moments; the folder always loads, as the newest
    completed step or a later one. Some children overwrite one name, some write a new name each time."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    runs = [(tmp_path / f"run{i}", "same" if i % 2 else "new") for i in range(4)]
    rng = random.Random()
    for _rnd in range(2):  # the second round starts over the debris of the first
        children = [
            subprocess.Popen(
                [sys.executable, str(script), str(d), mode],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for d, mode in runs
        ]
        try:
            first = []
            for child in children:
                line = child.stdout.readline()  # blocks until one save completed
                assert line.strip(), child.stderr.read()
                first.append(int(line))
            time.sleep(rng.uniform(0.0, 0.3))
            for child in children:
                time.sleep(rng.uniform(0.0, 0.08))  # ~1 save: land anywhere inside one
                child.send_signal(signal.SIGKILL)
            for (d, mode), child, step1 in zip(runs, children, first):
                assert child.wait(timeout=30) == -signal.SIGKILL
                completed = [step1] + [int(x) for x in child.stdout.read().split()]
                ckpt = load_checkpoint(d)  # never raises
                step = ckpt.meta["step"]
                assert step >= max(completed), (mode, step, completed)
                assert ckpt.model.transformer.wte.weight[0, 0].item() == step
                assert load_train_state(d)["step"] == step
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                child.stdout.close()
                child.stderr.close()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_load_train_state_never_runs_pickled_code(tmp_path, tiny_model, tiny_tokenizer, how, recwarn):
    ckpt = save_checkpoint(tmp_path, "ckpt-0000001", tiny_model, tiny_tokenizer, step=1, train_state={"step": 1})
    marker = tmp_path / "pwned"
    payload = {"step": 1, "optimizer": _Evil(marker)}
    if how == "pickle":
        (ckpt / "train_state.pt").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, ckpt / "train_state.pt")
    assert not marker.exists()
    with pytest.raises(UserError, match="train_state.pt"):
        load_train_state(tmp_path)
    assert not marker.exists()
    assert not [str(w.message) for w in recwarn]  # refused quietly: the CLI prints one line
    pickle.loads(pickle.dumps(_Evil(marker)))  # the payload is live: plain pickle does run it
    assert marker.exists()


def test_load_train_state_refuses_a_truncated_file(tmp_path, tiny_model, tiny_tokenizer):
    ckpt = save_checkpoint(
        tmp_path, "ckpt-0000001", tiny_model, tiny_tokenizer, step=1, train_state={"step": 1, "x": torch.randn(100)}
    )
    f = ckpt / "train_state.pt"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(UserError, match="unreadable"):
        load_train_state(tmp_path)


def test_corrupt_checkpoints_are_user_errors(tmp_path, tiny_model, tiny_tokenizer):
    ckpt = save_checkpoint(tmp_path, "ckpt-0000001", tiny_model, tiny_tokenizer, step=1)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(tmp_path)
    (ckpt / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not a pocketgpt checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing")
