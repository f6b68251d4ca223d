"""docs/trace.md is exactly what docs/trace.py writes (tiny seeded model, float64, one thread), so the numbers
docs/how-gpt-works.md quotes from it (tests/test_docs.py checks those quotes) cannot drift from the code.

After a change to the model, tokenizer or engine that moves a number, regenerate the file:
    .venv/bin/python docs/trace.py --out docs/trace.md
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketgpt import save_checkpoint
from pocketgpt.config import ModelConfig
from pocketgpt.model import GPT

ROOT = Path(__file__).resolve().parents[1]
SCRIPT, COMMITTED = ROOT / "docs" / "trace.py", ROOT / "docs" / "trace.md"


def load_trace():
    """docs/trace.py as a module (under another name: `trace` is also a standard-library module)."""
    spec = importlib.util.spec_from_file_location("pocketgpt_docs_trace", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def trace_mod():
    threads = torch.get_num_threads()
    yield load_trace()
    torch.set_num_threads(threads)  # the script runs on one thread; give the session its threads back


def test_committed_trace_is_what_the_script_writes(trace_mod, tmp_path):
    out = tmp_path / "trace.md"
    assert trace_mod.main(["--out", str(out)]) == 0
    fresh = out.read_text(encoding="utf-8")
    assert COMMITTED.read_text(encoding="utf-8") == fresh, (
        "docs/trace.md is stale: run `.venv/bin/python docs/trace.py --out docs/trace.md` and commit it"
    )


def test_trace_holds_what_the_doc_needs():
    text = COMMITTED.read_text(encoding="utf-8")
    for heading in ("## 1. Tokens", "## 2. Embedding rows", "## 3. Attention", "## 4. The next token", "## 5. The KV"):
        assert heading in text
    assert "-inf" in text  # the masked scores
    ranks = re.findall(r"^\s+([1-5])\s+\d+\s+.+\s(0\.\d{4}|1\.0000)$", text, flags=re.M)
    assert [r for r, _ in ranks] == ["1", "2", "3", "4", "5"]
    probs = [float(p) for _, p in ranks]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    held = [int(n) for n in re.findall(r"\(\d+, 1, \d+, (\d+), \d+\)$", text, flags=re.M)]
    assert len(held) == 4 and held == list(range(held[0], held[0] + 4))  # one slot more per decode step


def test_trace_runs_on_a_checkpoint(trace_mod, tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tiny_tokenizer.n_vocab)
    ckpt = save_checkpoint(tmp_path / "run", "ckpt-000000", GPT(cfg), tiny_tokenizer)
    out = tmp_path / "t.md"
    assert trace_mod.main(["--checkpoint", str(ckpt), "--prompt", "the model", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "the checkpoint `ckpt-000000`" in text and "(1, 1, 2, 32, 8)" in text
    # the weights the script computes by hand equal the model's own (it raises otherwise); and a broken cache
    # or attention would be caught: the script compares each cached decode step with a full forward pass


def test_trace_notices_a_softmax_that_differs_from_the_model(trace_mod, monkeypatch):
    model, tok, about = trace_mod.tiny_model(steps=1)
    real = trace_mod.head_scores

    def off_by_a_bit(*args, **kwargs):
        scores, masked, weights = real(*args, **kwargs)
        return scores, masked, weights * 0.99

    monkeypatch.setattr(trace_mod, "head_scores", off_by_a_bit)
    with pytest.raises(AssertionError, match="differs from the model"):
        trace_mod.trace(model, tok, "a residual", True, about)


@pytest.mark.slow
def test_trace_is_the_same_with_other_cpu_kernels(tmp_path):
    """Another machine's CPU runs other kernels (AVX2 instead of AVX-512, or none): simulated with
    ATEN_CPU_CAPABILITY and MKL_ENABLE_INSTRUCTIONS, the trace must come out byte for byte the same."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "trace.md"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT, env=env, check=True, timeout=300)
    assert out.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
