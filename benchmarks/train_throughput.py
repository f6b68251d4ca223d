"""Training throughput, pocketgpt vs nanoGPT, side by side in one run on this machine.

    python benchmarks/train_throughput.py --nanogpt ~/src/nanoGPT

For each shape both programs train from the command line as a user would run them, for the same steps:
nanoGPT's `train.py` (float32 on CPU: it never autocasts there) and `pocketgpt train` with the defaults a
user gets (`--train.dtype auto`: bf16 autocast where the CPU has native bf16 units, float32 elsewhere), and
pocketgpt again in float32 so the no-bf16 case is on the table too. Tokens/s is the batch's tokens over the
median time of a full step (forward + backward + clip + optimizer) after warmup, from nanoGPT's
"iter N: ... time X ms" lines and pocketgpt's metrics.jsonl `step_time`. MFU is model FLOPs (6N + 12LTC per
token, the same formula for both) over this machine's measured matmul peak. The GPT-2 shape also reports
the peak resident memory of each process, pocketgpt with activation checkpointing, and pocketgpt with
`--train.fused_loss false` (lm_head then F.cross_entropy over the full logits: the way before the fused,
chunked head + loss) for the before/after of that change.

Shapes: nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12, tiny Shakespeare by
character: nanoGPT's vocabulary is its 65 characters, pocketgpt's character tokenizer has 256 byte ids plus
specials, a slightly bigger head) and GPT-2 small (12/12/768, context 256, batch 4; GPT-2 token ids,
vocabulary 50304 in nanoGPT, 50257 in pocketgpt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import nanogpt  # noqa: E402
from common import header, load_line, run_process  # noqa: E402

from pocketgpt.config import ModelConfig  # noqa: E402
from pocketgpt.device import native_bf16, peak_flops  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHAPES = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, steps=40, warmup=10),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=4, steps=10, warmup=3),
    # --device cuda: GPT-2 124M at context 1024 in bf16, compiled, fused AdamW, flash attention through SDPA
    "gpt2-1024": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, steps=30, warmup=10),
}


def flops_per_token(shape: dict, vocab: int) -> float:
    cfg = ModelConfig(
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        block_size=shape["block_size"],
        vocab_size=vocab,
        bias=False,
    )
    with torch.device("meta"):
        return GPT(cfg).flops_per_token()


def nanogpt_run(root: Path, dataset: str, shape: dict, device: str = "cpu") -> dict:
    steps = shape["warmup"] + shape["steps"]
    where = (
        ["--device=cpu", "--compile=False"]
        if device == "cpu"
        else [f"--device={device}", "--compile=True", "--dtype=bfloat16"]
    )  # nanoGPT's own GPU defaults
    args = [
        *where,
        f"--dataset={dataset}",
        "--eval_iters=1",
        "--eval_interval=1000000",
        "--log_interval=1",
        f"--block_size={shape['block_size']}",
        f"--batch_size={shape['batch_size']}",
        f"--n_layer={shape['n_layer']}",
        f"--n_head={shape['n_head']}",
        f"--n_embd={shape['n_embd']}",
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        "--dropout=0.0",
        "--out_dir=out-bench",
        "--always_save_checkpoint=False",
    ]
    r = nanogpt.run_train(root, args, config="config/train_shakespeare_char.py")
    ms = [t for i, _, t in r["iters"] if i >= shape["warmup"]]
    return {"step_ms": statistics.median(ms), "maxrss": r["maxrss"], "cmd": r["cmd"]}


def pocketgpt_run(work: Path, data: Path, shape: dict, tokenizer: list[str], extra: list[str]) -> dict:
    out = work / f"pg-{len(list(work.glob('pg-*')))}"
    steps = shape["warmup"] + shape["steps"]
    cmd = [
        sys.executable,
        "-m",
        "pocketgpt.cli.main",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache_dir",
        str(work / "cache"),
        *tokenizer,
        "--model.n_layer",
        shape["n_layer"],
        "--model.n_head",
        shape["n_head"],
        "--model.n_embd",
        shape["n_embd"],
        "--model.block_size",
        shape["block_size"],
        "--model.bias",
        "false",
        "--train.batch_size",
        shape["batch_size"],
        "--train.max_steps",
        steps,
        "--train.warmup_steps",
        2,
        "--train.eval_every",
        0,
        "--train.eval_tokens",
        64,
        "--train.save_every",
        0,
        "--train.log_every",
        1,
        "--train.samples",
        0,
        "--corpus.val_fraction",
        0.01,
        *extra,
    ]
    cmd = [str(c) for c in cmd]
    r = run_process(cmd, cwd=ROOT)
    if r["rc"] != 0:
        raise RuntimeError(f"pocketgpt train failed:\n{r['out'][-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ms = [1000 * row["step_time"] for row in rows if "step_time" in row and row["step"] > shape["warmup"]]
    return {"step_ms": statistics.median(ms), "maxrss": r["maxrss"], "cmd": " ".join(cmd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, help="path to a nanoGPT checkout (git clone of karpathy/nanoGPT)")
    ap.add_argument("--shapes", default="small,gpt2")
    ap.add_argument("--text", default=str(SHARED / "tinyshakespeare.txt"))
    ap.add_argument("--gpt2-vocab", default=str(SHARED / "gpt2"), help="folder with GPT-2's encoder.json + vocab.bpe")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every run; the table shows the median")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: then shape gpt2-1024 in bf16 with torch.compile "
        "in both (nanoGPT's GPU defaults; pocketgpt --train.compile true)",
    )
    args = ap.parse_args()
    if args.device != "cpu":
        args.shapes = "gpt2-1024"
    checkout = nanogpt.check_checkout(args.nanogpt)
    text = Path(args.text)
    if not text.exists():
        raise SystemExit(f"--text {text}: no such file (tiny Shakespeare lives in ../shared/data/)")

    header("Training throughput: pocketgpt vs nanoGPT (tokens/s of a full training step, same machine, same run)")
    dev = torch.device(args.device)
    if dev.type == "cpu":
        peak32 = peak_flops(dev, torch.float32, n=2048)
        peak16 = peak_flops(dev, torch.bfloat16, n=2048) if native_bf16(dev) else 0.0
    else:
        print(f"GPU: {torch.cuda.get_device_name(dev)}")
        peak32 = peak_flops(dev, torch.float32, n=8192)
        peak16 = peak_flops(dev, torch.bfloat16, n=8192)
    print(
        f"{load_line()} | matmul peak: float32 {peak32 / 1e9:.0f} GFLOP/s"
        + (f", bf16 {peak16 / 1e9:.0f} GFLOP/s" if peak16 else ", bf16 not native (auto = float32)")
    )
    default_dtype = "bf16 autocast" if native_bf16(dev) else "float32"
    gpu = [] if args.device == "cpu" else ["--train.device", args.device, "--train.compile", "true"]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        root = nanogpt.workdir(checkout, work / "nanogpt")
        nanogpt.prepare_char(checkout, root, text)
        rows = []
        for name in args.shapes.split(","):
            shape = SHAPES[name]
            if name == "small":
                dataset, tok, vocabs = "shakespeare_char", ["--tokenizer.kind", "char"], (65, 261)
            else:
                from pocketgpt.checkpoint import load_tokenizer

                gpt2 = load_tokenizer(args.gpt2_vocab)
                ids = np.array(gpt2.encode(text.read_text()), dtype=np.uint16)
                cut = int(len(ids) * 0.9)
                nanogpt.prepare_ids(root, "gpt2_tokens", ids[:cut], ids[cut:])
                dataset, tok, vocabs = "gpt2_tokens", ["--tokenizer.path", args.gpt2_vocab], (50304, 50257)
            ng_label = "nanoGPT (float32)" if args.device == "cpu" else "nanoGPT (bf16, compile)"
            runs = {ng_label: [], f"pocketgpt default ({default_dtype})": []}
            if args.device == "cpu":
                runs["pocketgpt float32"] = []
            if name == "gpt2":
                runs["pocketgpt default, plain head + loss (before fused_loss)"] = []
                runs["pocketgpt default + activation checkpointing"] = []
            for _ in range(args.rounds):
                runs[ng_label].append(nanogpt_run(root, dataset, shape, args.device))
                runs[f"pocketgpt default ({default_dtype})"].append(pocketgpt_run(work, text, shape, tok, gpu))
                if args.device == "cpu":
                    runs["pocketgpt float32"].append(
                        pocketgpt_run(work, text, shape, tok, ["--train.dtype", "float32"])
                    )
                if name == "gpt2":
                    runs["pocketgpt default, plain head + loss (before fused_loss)"].append(
                        pocketgpt_run(work, text, shape, tok, ["--train.fused_loss", "false"])
                    )
                    runs["pocketgpt default + activation checkpointing"].append(
                        pocketgpt_run(work, text, shape, tok, ["--train.activation_checkpointing", "true"])
                    )
            tokens = shape["batch_size"] * shape["block_size"]
            base = None
            for label, rs in runs.items():
                ms = statistics.median(r["step_ms"] for r in rs)
                tok_s = tokens / ms * 1000
                base = base or tok_s
                vocab = vocabs[0] if label.startswith("nanoGPT") else vocabs[1]
                achieved = tok_s * flops_per_token(shape, vocab)
                rows.append(
                    (
                        name,
                        label,
                        ms,
                        tok_s,
                        tok_s / base,
                        100 * achieved / peak32,
                        100 * achieved / peak16 if peak16 else float("nan"),
                        max(r["maxrss"] for r in rs) / 2**20,
                    )
                )
            print(f"  [{name}] nanoGPT: {runs[ng_label][0]['cmd']}")

    print(f"\n{load_line()}")
    print("| shape | run | ms/step | tokens/s | vs nanoGPT | MFU vs fp32 peak | MFU vs bf16 peak | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, label, ms, tok_s, ratio, m32, m16, rss in rows:
        m16s = f"{m16:.1f}%" if m16 == m16 else "n/a"
        print(f"| {name} | {label} | {ms:.1f} | {tok_s:,.0f} | {ratio:.2f}x | {m32:.1f}% | {m16s} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
