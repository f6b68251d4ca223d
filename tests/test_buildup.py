"""docs/buildup.py (the build-up table of docs/build-up.md) at toy size, on a few KB of text the test writes."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "buildup.py"


@pytest.fixture(scope="module")
def buildup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second (spinning) thread only slows a shared machine down
    spec = importlib.util.spec_from_file_location("docs_buildup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    torch.set_num_threads(threads)


def toy_text(n_bytes: int = 6000, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = "the king and queen speak of love war and death to thee my lord".split()
    out = []
    while sum(len(w) + 1 for w in out) < n_bytes:
        out.append(rng.choice(words))
    return " ".join(out).encode()[:n_bytes]


def test_every_row_is_measured_and_the_unmasked_model_reads_the_answer(buildup):
    toy = dict(n_embd=32, n_head=2, n_layer=1, block_size=16, batch_size=16, steps=250, lr=5e-3)
    s = buildup.Settings(**toy, past_windows=4, sample_chars=20)
    rows = buildup.buildup(toy_text(), s)
    assert [r.name for r in rows] == [name for name, _ in buildup.ROWS]
    assert all(r.params > 0 and 0 < r.val_bpb < 9 and 0 < r.past_bpb < 12 for r in rows)
    masked, unmasked = rows[-2], rows[-1]
    assert masked.params == unmasked.params  # the same model, only the mask differs
    assert unmasked.train_bpb < 0.5 * masked.train_bpb  # training loss collapses: position t reads token t+1
    assert unmasked.past_bpb > 2 * unmasked.val_bpb  # ...and given only the past, as when generating, it fails
    assert abs(masked.past_bpb - masked.val_bpb) < 0.5  # a causal model scores alike both ways
    assert rows[0].val_bpb > rows[-2].val_bpb  # the full GPT beats the bigram
    assert masked.sample and unmasked.sample
    table = buildup.markdown(rows, s, "python docs/buildup.py --toy")
    assert table.count("\n|") == len(rows) + 2 and "without the causal mask" in table


def test_past_only_equals_teacher_forced_for_a_causal_model_and_unmask_removes_the_mask(buildup):
    s = buildup.Settings(n_embd=16, n_head=2, n_layer=1, block_size=16, steps=0, past_windows=3)
    data = np.frombuffer(toy_text(2000), dtype=np.uint8)
    torch.manual_seed(0)
    model = buildup.build(6, s).eval()
    windows = np.linspace(0, len(data) - s.block_size - 2, s.past_windows).astype(np.int64)
    forced = sum(buildup.bpb(model, data[i : i + s.block_size + 1], s) for i in windows) / len(windows)
    assert buildup.past_only_bpb(model, data, s) == pytest.approx(forced, abs=1e-4)

    x = torch.randint(256, (1, 8))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 256  # change only the last token
    torch.testing.assert_close(model(x)[0][:, 0], model(y)[0][:, 0])  # causal: position 0 cannot see it
    unmasked = buildup.unmask(model)
    assert not torch.allclose(unmasked(x)[0][:, 0], unmasked(y)[0][:, 0])  # unmasked: position 0 sees the future
