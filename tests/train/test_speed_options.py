"""Options that make training faster (issue 7): Muon, activation checkpointing, the bf16 CPU attention path,
a time budget, automatic threads. Each must keep the model's maths and the loop's guarantees."""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import OneBatch

from pocketgpt.config import ModelConfig, TrainConfig
from pocketgpt.device import physical_cores, set_threads
from pocketgpt.model import GPT
from pocketgpt.model.gpt import matmul_attention
from pocketgpt.train.loop import train_loop
from pocketgpt.train.optim import Muon, Optimizers, build_optimizer, muon_params, orthogonalize
from pocketgpt.train.schedule import lr_at


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64), **kw})


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (48, 48)])
def test_orthogonalize_gives_singular_values_near_one(shape):
    """G = U S V^T with singular values spread over 30x -> about U V^T: same singular vectors, values near 1."""
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(-1.5, 0, k)) @ v.T
    o = orthogonalize(g)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic lands in ~[0.7, 1.2]
    assert abs(s.mean().item() - 1.0) < 0.2
    inner = u.T @ o @ v  # diagonal: the directions are kept
    assert (inner - torch.diag(torch.diagonal(inner))).abs().max() < 1e-3
    stacked = orthogonalize(torch.stack([g, 2 * g]))  # batched = one by one, and scale-free
    assert torch.allclose(stacked[0], o, atol=1e-5)
    assert torch.allclose(stacked[1], o, atol=1e-5)


def test_muon_trains_block_matrices_and_adamw_the_rest():
    model = GPT(small_cfg(tie_embeddings=False))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02), torch.device("cpu"))
    assert isinstance(opt, Optimizers) and isinstance(opt.optimizers["muon"], Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in opt.optimizers["muon"].param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in opt.optimizers["adamw"].param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight"} <= in_adamw
    scales = sorted(g["lr_scale"] for g in opt.param_groups)
    assert scales[-1] == pytest.approx(20.0) and scales[0] == 1.0  # muon_lr / lr: one schedule drives both
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def test_muon_lowers_the_loss_and_resumes_from_its_state(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg()
    x = torch.randint(0, 64, (4, 32))
    y = torch.roll(x, -1, dims=1)
    model = GPT(cfg)
    with torch.no_grad():
        start = model(x, y)[1].item()
    tcfg = TrainConfig(
        max_steps=60,
        lr=3e-3,
        warmup_steps=5,
        eval_every=0,
        save_every=0,
        log_every=0,
        dtype="float32",
        optimizer="muon",
        muon_lr=0.05,
    )
    states = []
    result = train_loop(model, OneBatch(x, y), tcfg, tmp_path, save=lambda n, s, st, w: states.append(st))
    assert result.train_loss < 0.5 * start, (start, result.train_loss)
    opt = build_optimizer(model, tcfg, torch.device("cpu"))
    opt.load_state_dict(states[-1]["optimizer"])  # what --resume does
    assert opt.state_dict()["muon"]["state"].keys() == states[-1]["optimizer"]["muon"]["state"].keys()
    with pytest.raises(ValueError, match="optimizer state"):
        opt.load_state_dict(states[-1]["optimizer"]["adamw"])


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = small_cfg(pos_encoding="rope", qk_norm=True)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing = True
    x = torch.randint(0, 64, (3, 32))
    for m in (a, b):
        m(x, torch.roll(x, -1, 1))[1].backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n
    b.eval()
    with torch.no_grad():
        assert torch.equal(a.eval()(x)[0], b(x)[0])  # inference never recomputes


def test_matmul_attention_is_the_formula_and_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(matmul_attention(q, k, v), ref, atol=1e-6)
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    assert (matmul_attention(q16, k16, v16).float() - ref).abs().max() < 0.05


def test_bf16_autocast_forward_stays_close_to_float32():
    """The CPU bf16 path (matmul attention under autocast) computes the same model as float32."""
    torch.manual_seed(0)
    model = GPT(small_cfg(pos_encoding="rope", qk_norm=True)).eval()
    x = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        ref = model(x, torch.roll(x, -1, 1))[1]
        with torch.autocast("cpu", torch.bfloat16):
            low = model(x, torch.roll(x, -1, 1))[1]
    assert abs(low.item() - ref.item()) < 0.02


def test_max_time_stops_the_run_and_decays_by_the_clock(tmp_path):
    cfg = TrainConfig(max_steps=100, warmup_steps=0, lr=1.0, min_lr_ratio=0.0, max_time=10.0)
    assert lr_at(0, cfg, elapsed=5.0) == pytest.approx(0.5)  # half the time: half-way down the cosine
    assert lr_at(90, cfg, elapsed=1.0) < lr_at(0, cfg, elapsed=1.0)  # steps still count when they run out first
    assert lr_at(0, cfg, elapsed=10.0) == pytest.approx(0.0)
    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, 32))
    saved = []
    tcfg = TrainConfig(
        max_steps=10**6, warmup_steps=0, eval_every=0, save_every=0, log_every=0, dtype="float32", max_time=0.5
    )
    result = train_loop(
        GPT(small_cfg()),
        OneBatch(x, torch.roll(x, -1, 1)),
        tcfg,
        tmp_path,
        save=lambda n, s, st, w: saved.append((n, s, st["elapsed"])),
    )
    assert 0 < result.step < 10**6 and not result.interrupted
    assert saved[-1][1] == result.step and saved[-1][2] >= 0.5  # the elapsed time is saved for --resume


def test_threads_default_to_physical_cores_and_honour_overrides(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert set_threads(0) == physical_cores() >= 1
        assert physical_cores() <= len(os.sched_getaffinity(0))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(0) == 1
        assert set_threads(2) == 2  # an explicit count wins
    finally:
        torch.set_num_threads(before)


def test_muon_params_found_inside_wrappers():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt = GPT(small_cfg())

    assert len(muon_params(Wrapper())) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj


def test_cpu_speedrun_preset_trains_with_every_option(run_cli, corpus_file, tmp_path):
    """The preset's model/optimizer/clock options work together end to end (shrunk to a few seconds)."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        "train",
        "--preset",
        "cpu-speedrun",
        "--data",
        corpus_file,
        "--out",
        out,
        "--cache_dir",
        tmp_path / "cache",
        "--tokenizer.vocab_size",
        300,
        "--model.block_size",
        32,
        "--model.n_embd",
        32,
        "--model.n_layer",
        1,
        "--train.max_time",
        1.5,
        "--train.batch_size",
        4,
        "--train.samples",
        0,
        "--train.warmup_steps",
        2,
        "--train.activation_checkpointing",
        "true",
    )
    assert code == 0, err
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["qk_norm"] and cfg["model"]["pos_encoding"] == "rope" and cfg["train"]["optimizer"] == "muon"
    assert cfg["corpus"]["val_fraction"] == 0.1 and cfg["train"]["max_time"] == 1.5
    import json

    final = json.loads((out / "final.json").read_text())
    assert 0 < final["step"] < 100000 and final["val_bpb"] > 0
    assert "max_time" in stdout or "max_time" in err


def test_matmul_attention_dropout_drops_probabilities():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    assert torch.equal(matmul_attention(q, k, v, 0.0), matmul_attention(q, k, v))
    torch.manual_seed(1)
    a = matmul_attention(q, k, v, 0.5)
    torch.manual_seed(1)
    assert torch.equal(a, matmul_attention(q, k, v, 0.5))  # seeded, so repeatable
    assert not torch.allclose(a, matmul_attention(q, k, v))


def test_speedrun_script_refuses_a_missing_text_file(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "runs" / "speedrun.sh"
    r = subprocess.run(
        ["bash", str(script), str(tmp_path / "missing.txt"), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(__import__("pocketgpt.config", fromlist=["PRESETS"]).PRESETS))
def test_every_preset_is_a_valid_run_config(name):
    from pocketgpt.config import TrainRun, from_dict, get_preset

    run = from_dict(TrainRun, get_preset(name))  # every key known, every value passes its checks
    if run.model.pos_encoding == "rope":
        assert run.model.head_dim % 2 == 0
