"""Training on 1 and 2 processes (torchrun, DDP and FSDP2): tokens/s, MFU and the gradient-sync time per step.

    python benchmarks/train_scaling.py                 # CPU: 1 process x 2 threads vs 2 processes x 1 thread
    python benchmarks/train_scaling.py --device cuda   # one GPU: world 1, bf16, torch.compile

Every row is `pocketgpt train` launched as a user would (`torchrun --nproc-per-node N -m pocketgpt train ...` for
N > 1), with the same per-step global batch (world x batch_size x grad_accum), so the optimizer sees the same tokens.
Tokens/s is the global batch's tokens over the median step time after warmup (rank 0's metrics.jsonl `step_time`);
MFU is model FLOPs (6N + 12LTC per token) over the machine's measured matmul peak (all ranks share these cores).
The sync row times what one step's gradient exchange costs on its own: an all-reduce (DDP) or a reduce-scatter +
all-gather (FSDP) of the model's float32 gradients between 2 gloo processes, median of 20.
On a 2-core CPU the point is the path, not the speed-up: 2 processes x 1 thread do the same work as 1 x 2, plus sync.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import header, load_line, run_process  # noqa: E402

from pocketgpt.config import ModelConfig  # noqa: E402
from pocketgpt.device import native_bf16, peak_flops  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHAPES = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=8, steps=30, warmup=5),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=4, steps=12, warmup=3),
    "gpt2-1024": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, steps=30, warmup=10),
}
SYNC = r"""
import os, statistics, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
n, world = int(sys.argv[1]), dist.get_world_size()
g = torch.randn(n)
shard, full = torch.empty(n // world), torch.empty(n // world * world)
def time_it(f):
    f(); ts = []
    for _ in range(20):
        dist.barrier(); t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
ar = time_it(lambda: dist.all_reduce(g))
rs = time_it(lambda: (dist.reduce_scatter_tensor(shard, g[: shard.numel() * world]), dist.all_gather_into_tensor(full, shard)))
if dist.get_rank() == 0:
    print(f"SYNC {ar * 1000:.3f} {rs * 1000:.3f}")
dist.destroy_process_group()
"""


def model_cfg(shape: dict, vocab: int) -> ModelConfig:
    keys = ("n_layer", "n_head", "n_embd", "block_size")
    return ModelConfig(**{k: shape[k] for k in keys}, vocab_size=vocab)


def torchrun(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "pocketgpt"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
            "pocketgpt"]  # fmt: skip


def run(work: Path, text: Path, shape: dict, *, nproc: int, threads: int, grad_accum: int, extra: list[str]) -> dict:
    out = work / f"run-{len(list(work.glob('run-*')))}"
    steps = shape["warmup"] + shape["steps"]
    flags = {
        "--data": text, "--out": out, "--cache_dir": work / "cache", "--tokenizer.kind": "bpe",
        "--tokenizer.vocab_size": 4096, "--model.n_layer": shape["n_layer"], "--model.n_head": shape["n_head"],
        "--model.n_embd": shape["n_embd"], "--model.block_size": shape["block_size"],
        "--train.batch_size": shape["batch_size"], "--train.grad_accum": grad_accum, "--train.max_steps": steps,
        "--train.warmup_steps": 2, "--train.eval_every": 0, "--train.eval_tokens": 64, "--train.save_every": 0,
        "--train.log_every": 1, "--train.samples": 0, "--train.threads": threads, "--corpus.val_fraction": 0.01,
    }  # fmt: skip
    cmd = [*torchrun(nproc), "train", *[str(x) for kv in flags.items() for x in kv], *extra]
    r = run_process(cmd, cwd=ROOT)
    if r["rc"] != 0:
        raise RuntimeError(f"pocketgpt train failed:\n{r['out'][-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ms = [1000 * row["step_time"] for row in rows if "step_time" in row and row["step"] > shape["warmup"]]
    return {"step_ms": statistics.median(ms), "cmd": " ".join(map(str, cmd)), "maxrss": r["maxrss"]}


def sync_ms(work: Path, n_params: int) -> tuple[float, float]:
    script = work / "sync.py"
    script.write_text(SYNC)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(n_params)]  # fmt: skip
    r = run_process(cmd, cwd=work)
    line = next((ln for ln in r["out"].splitlines() if ln.startswith("SYNC ")), None)
    if line is None:
        raise RuntimeError(f"sync timing failed:\n{r['out'][-2000:]}")
    ar, rs = (float(v) for v in line.split()[1:])
    return ar, rs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="small,medium")
    ap.add_argument("--text", default=str(SHARED / "tinyshakespeare.txt"))
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: one GPU, world 1, bf16, torch.compile")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    text = Path(args.text)
    if not text.exists():
        raise SystemExit(f"--text {text}: no such file (tiny Shakespeare lives in ../shared/data/)")
    header("Training on 1 and 2 processes: tokens/s, MFU, gradient sync (same global batch, same run)")
    dev = torch.device(args.device)
    cpu = dev.type == "cpu"
    dtype = torch.bfloat16 if native_bf16(dev) else torch.float32
    peak = peak_flops(dev, dtype, n=2048 if cpu else 8192)
    print(f"peak matmul {peak / 1e9:,.0f} GFLOP/s ({str(dtype).replace('torch.', '')}, all cores) | {load_line()}")
    shapes = ["gpt2-1024"] if not cpu else args.shapes.split(",")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        rows = []
        for name in shapes:
            shape = SHAPES[name]
            cfg = model_cfg(shape, 4096)
            with torch.device("meta"):
                model = GPT(cfg)
            fpt, n_params = model.flops_per_token(), model.num_params()
            tokens = shape["batch_size"] * shape["block_size"]
            if cpu:
                layouts = [
                    ("1 process x 2 threads", 1, 2, 2, []),
                    ("2 processes x 1 thread, DDP", 2, 1, 1, ["--train.parallel", "ddp"]),
                    ("2 processes x 1 thread, FSDP", 2, 1, 1, ["--train.parallel", "fsdp"]),
                ]
            else:
                layouts = [("1 GPU, bf16, compile", 1, 0, 1, ["--train.compile", "true", "--train.device", "cuda"])]
            for label, nproc, threads, accum, extra in layouts:
                r = run(work, text, shape, nproc=nproc, threads=threads, grad_accum=accum, extra=extra)
                tok_s = 2 * tokens / (r["step_ms"] / 1000) if cpu else tokens / (r["step_ms"] / 1000)
                rows.append((name, label, r["step_ms"], tok_s, 100 * tok_s * fpt / peak))
            if cpu:
                ar, rs = sync_ms(work, n_params)
                rows.append((name, f"sync of {n_params / 1e6:.2f}M fp32 grads", None, ar, rs))
        print()
        print(f"{'shape':8s} {'layout':34s} {'step ms':>9s} {'tokens/s':>10s} {'MFU':>6s}")
        for name, label, step_ms, a, b in rows:
            if step_ms is None:
                print(
                    f"{name:8s} {label:34s} all-reduce (DDP) {a:.2f} ms · reduce-scatter + all-gather (FSDP) {b:.2f} ms"
                )
            else:
                print(f"{name:8s} {label:34s} {step_ms:9.1f} {a:10,.0f} {b:5.1f}%")
        base = {name: tok for name, label, step_ms, tok, _ in rows if step_ms is not None and label.startswith("1 ")}
        for name, label, step_ms, tok, _ in rows:
            if step_ms is not None and not label.startswith("1 "):
                print(f"{name}: {label} = {tok / base[name]:.2f}x the tokens/s of one process")


if __name__ == "__main__":
    main()
