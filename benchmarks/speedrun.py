"""Time to quality on tiny Shakespeare: nanoGPT's CPU recipe vs pocketgpt's `cpu-speedrun`, same machine, same run.

    python benchmarks/speedrun.py --nanogpt ~/src/nanoGPT [--ablations] [--skip-nanogpt-bpb 2.739]

1. nanoGPT's documented CPU recipe (train.py config/train_shakespeare_char.py --device=cpu --compile=False
   --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
   --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0), data prepared offline by its own prepare.py from
   the same text; its final checkpoint is evaluated on the WHOLE validation split (the last 10% of the
   characters, non-overlapping windows of its context) and converted to bits per byte (one byte per
   character: the text is ASCII).
2. pocketgpt's `cpu-speedrun` preset (what runs/speedrun.sh runs) on the same file with the same 90/10 cut,
   so the validation bytes are identical; its bits per byte are over every byte of that split. Wall time is
   measured from process launch (tokenizer training, data preparation, start-up and evaluation included)
   to the moment its whole-split result is written.
3. With --ablations: the preset with one change reverted at a time, each under the same wall-clock budget
   (train.max_time), so the table reads as "bits per byte at equal wall time".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import nanogpt  # noqa: E402
from common import header, load_line, run_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_RECIPE = [
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
# one change of the preset reverted at a time (flag overrides on top of --preset cpu-speedrun)
ABLATIONS = {
    "none (cpu-speedrun as is)": [],
    "BPE tokens -> characters": ["--tokenizer.kind", "char"],
    "RoPE -> learned positions": ["--model.pos_encoding", "learned"],
    "QK-norm -> off": ["--model.qk_norm", "false"],
    "ReLU^2 -> GELU": ["--model.activation", "gelu"],
    "tied head -> untied": ["--model.tie_embeddings", "false"],
    "Muon -> AdamW only": ["--train.optimizer", "adamw"],
    "bf16 autocast -> float32": ["--train.dtype", "float32"],
}


def run_nanogpt(checkout: Path, work: Path, text: Path) -> dict:
    root = nanogpt.workdir(checkout, work / "nanogpt")
    data = nanogpt.prepare_char(checkout, root, text)
    out = root / "out-speedrun"
    r = nanogpt.run_train(root, NANOGPT_RECIPE + [f"--out_dir={out}"], config="config/train_shakespeare_char.py")
    model, ckpt = nanogpt.load_model(checkout, out / "ckpt.pt")
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    loss = nanogpt.whole_split_loss(model, val, ckpt["model_args"]["block_size"])
    if not text.read_text(encoding="utf-8").isascii():
        raise SystemExit(f"{text}: not ASCII, so nanoGPT's characters are not bytes; bits/byte would be wrong")
    bpb = loss / math.log(2)  # nats per character -> bits per byte (1 byte a character)
    return {"wall": r["wall"], "loss": loss, "bpb": bpb, "iter": ckpt["iter_num"], "cmd": r["cmd"]}


def run_pocketgpt(work: Path, text: Path, name: str, extra: list[str]) -> dict:
    out = work / f"pocketgpt-{name}"
    cmd = [
        sys.executable,
        "-m",
        "pocketgpt.cli.main",
        "train",
        "--preset",
        "cpu-speedrun",
        "--data",
        str(text),
        "--out",
        str(out),
        "--cache_dir",
        str(work / f"cache-{name}"),
        "--train.samples",
        "0",
        *extra,
    ]
    r = run_process(cmd, cwd=ROOT)
    if r["rc"] != 0:
        raise RuntimeError(f"pocketgpt train failed:\n{r['out'][-3000:]}")
    final = json.loads((out / "final.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(row["time"] - r["start_unix"], row["step"], row["val_bpb"]) for row in rows if "val_bpb" in row]
    curve.append((final["time"] - r["start_unix"], final["step"], final["val_bpb"]))
    return {
        "wall": r["wall"],
        "to_result": final["time"] - r["start_unix"],
        "bpb": final["val_bpb"],
        "loss": final["val_loss"],
        "step": final["step"],
        "curve": curve,
        "cmd": " ".join(cmd),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", help="path to a nanoGPT checkout (git clone of karpathy/nanoGPT)")
    ap.add_argument(
        "--skip-nanogpt-bpb",
        type=float,
        default=None,
        help="don't run nanoGPT; compare against this bits-per-byte figure (and --nanogpt-wall)",
    )
    ap.add_argument("--nanogpt-wall", type=float, default=None)
    ap.add_argument("--text", default=str(TEXT))
    ap.add_argument("--ablations", action="store_true", help="also run the preset with each change reverted")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--eval-every", type=int, default=25, help="whole-split evaluations every this many steps")
    args = ap.parse_args()
    text = Path(args.text)
    if not text.exists():
        raise SystemExit(f"--text {text}: no such file (tiny Shakespeare lives in ../shared/data/)")
    if args.skip_nanogpt_bpb is None and not args.nanogpt:
        raise SystemExit("give --nanogpt PATH (a nanoGPT checkout), or --skip-nanogpt-bpb X --nanogpt-wall S")

    header("Time to quality on tiny Shakespeare: nanoGPT CPU recipe vs pocketgpt cpu-speedrun (same machine, same run)")
    print(load_line())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        if args.skip_nanogpt_bpb is None:
            ng = run_nanogpt(nanogpt.check_checkout(args.nanogpt), work, text)
            print(f"nanoGPT: {ng['cmd']}")
        else:
            ng = {
                "wall": args.nanogpt_wall or float("nan"),
                "bpb": args.skip_nanogpt_bpb,
                "loss": float("nan"),
                "iter": 2000,
            }
        # evaluations on the whole split every EVAL_EVERY steps show when it first reaches nanoGPT's quality (their
        # cost is inside the time budget, so they make the run slightly worse, never better)
        pg = run_pocketgpt(work, text, "speedrun", ["--train.eval_every", str(args.eval_every)])
        print(f"pocketgpt: {pg['cmd']}")
        rows = [
            ("nanoGPT CPU recipe (2000 iters, float32)", ng["wall"], ng["wall"], ng["bpb"]),
            ("pocketgpt cpu-speedrun", pg["wall"], pg["to_result"], pg["bpb"]),
        ]
        ablations = []
        if args.ablations:
            for label, extra in ABLATIONS.items():
                r = run_pocketgpt(work, text, str(len(ablations)), extra)
                ablations.append((label, r))

    print(f"\n{load_line()}")
    print("| run | wall s (process) | s to its result | val bits/byte (whole split) | time vs nanoGPT |")
    print("|---|---:|---:|---:|---:|")
    for label, wall, to_result, bpb in rows:
        print(f"| {label} | {wall:.1f} | {to_result:.1f} | {bpb:.4f} | {to_result / ng['wall']:.2f}x |")
    print(
        "\npocketgpt's whole-split evaluations (seconds from launch, step, bits/byte): "
        + ", ".join(f"{t:.1f}s/{s}/{b:.3f}" for t, s, b in pg["curve"])
    )
    first = next(((t, s, b) for t, s, b in pg["curve"] if b <= ng["bpb"]), None)
    if first:
        print(
            f"pocketgpt first reached nanoGPT's {ng['bpb']:.4f} bits/byte at {first[0]:.1f} s (step {first[1]}, "
            f"{first[2]:.4f}) = {first[0] / ng['wall']:.2f} of nanoGPT's {ng['wall']:.1f} s (target: <= 0.33); "
            f"it ended at {pg['bpb']:.4f} after {pg['to_result']:.1f} s"
        )
    else:
        print(f"pocketgpt did NOT reach nanoGPT's {ng['bpb']:.4f} bits/byte (ended at {pg['bpb']:.4f})")
    if ablations:
        print(
            "\nAblation: the preset with one change reverted, same wall-clock budget (train.max_time), evaluated only "
            "at the end (so more steps than the run above)"
        )
        print("| change reverted | steps | val bits/byte | vs preset |")
        print("|---|---:|---:|---:|")
        base = ablations[0][1]["bpb"]
        for label, r in ablations:
            print(f"| {label} | {r['step']} | {r['bpb']:.4f} | {r['bpb'] - base:+.4f} |")


if __name__ == "__main__":
    main()
