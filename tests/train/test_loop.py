"""The training loop: a tiny model overfits one batch; the schedule; decay groups; batches are a function of the step."""

import numpy as np
import pytest
import torch
from conftest import OneBatch

from pocketgpt.config import TrainConfig
from pocketgpt.data.loader import TokenBatches
from pocketgpt.model import GPT
from pocketgpt.train.loop import train_loop
from pocketgpt.train.optim import param_groups
from pocketgpt.train.schedule import lr_at


def test_tiny_model_overfits_one_batch(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_cfg)
    x = torch.randint(0, tiny_cfg.vocab_size, (4, 32))
    y = torch.roll(x, -1, dims=1)
    cfg = TrainConfig(
        max_steps=150,
        lr=3e-3,
        warmup_steps=10,
        eval_every=0,
        save_every=0,
        log_every=0,
        weight_decay=0.0,
        dtype="float32",
    )
    saved = []
    result = train_loop(model, OneBatch(x, y), cfg, tmp_path, save=lambda *a: saved.append(a[0]))
    assert result.step == 150 and not result.interrupted
    assert result.train_loss < 0.3, result.train_loss  # from ln(V) ≈ 5.8 at init
    assert saved == ["ckpt-0000150"]  # saves at the end even with save_every=0


def test_schedule_warmup_cosine_floor():
    cfg = TrainConfig(max_steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(549, cfg) == pytest.approx(0.55e-3)  # halfway down the cosine
    assert lr_at(999, cfg) == pytest.approx(1e-4)  # the floor at the last step
    assert lr_at(1000, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    lin = TrainConfig(max_steps=200, warmup_steps=0, lr=1.0, min_lr_ratio=0.0, schedule="linear")
    assert lr_at(99, lin) == pytest.approx(0.5)
    assert lr_at(7, TrainConfig(schedule="constant", warmup_steps=0, lr=2.0)) == 2.0


def test_weight_decay_only_on_matrices(tiny_model):
    decay, no_decay = param_groups(tiny_model, 0.1)
    named = {id(p): n for n, p in tiny_model.named_parameters()}
    decayed = {named[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in decayed)
    assert "transformer.wte.weight" in {named[id(p)] for p in no_decay["params"]}
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == tiny_model.num_params()  # every parameter once (tied matrix counted once)


def test_batches_are_a_pure_function_of_seed_and_step():
    data = np.arange(10_000, dtype=np.uint16)
    a = TokenBatches([data], block_size=16, batch_size=4, seed=3)
    b = TokenBatches([data], block_size=16, batch_size=4, seed=3)
    x1, y1 = a.get(5)
    a.get(6)
    x2, y2 = b.get(5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are inputs shifted by one
    assert not torch.equal(a.get(5)[0], a.get(7)[0])
    assert not torch.equal(a.get(5)[0], TokenBatches([data], 16, 4, seed=3, rank=1).get(5)[0])


def test_nan_loss_stops_with_a_clear_error(tiny_cfg, tmp_path):
    model = GPT(tiny_cfg)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 16))
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float("nan")
    x[0, 0] = 0
    cfg = TrainConfig(max_steps=3, warmup_steps=0, eval_every=0, save_every=0, log_every=0, dtype="float32")
    with pytest.raises(FloatingPointError, match="train.lr"):
        train_loop(model, OneBatch(x, x), cfg, tmp_path, save=lambda *a: None)
