"""The loss curve of a run: metrics.jsonl -> loss.png (train loss, validation loss and bits per byte)."""

from __future__ import annotations

import json
from pathlib import Path

from pocketgpt.errors import UserError


def plot_run(run_dir: Path | str, out: Path | str | None = None) -> Path:
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise UserError(f"no metrics.jsonl in {run_dir}: not a training run folder")
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    if not rows:
        raise UserError(f"{metrics} is empty: nothing to plot yet")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    bpb = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    if bpb:
        ax2 = ax.twinx()
        ax2.plot(*zip(*bpb), "s--", color="tab:green", label="validation bits/byte", lw=1)
        ax2.set_ylabel("bits per byte")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right")
    else:
        ax.legend(loc="upper right")
    ax.set_title(f"pocketgpt: {run_dir.name}")
    fig.tight_layout()
    out = Path(out) if out else run_dir / "loss.png"
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
