"""Pictures, drawn with matplotlib's Agg backend (no display): the loss curve of a run (metrics.jsonl -> loss.png:
train loss, validation loss and bits per byte), and what `pocketgpt explain` computed (explain.py): one layer's
attention weights as heatmaps, and the next-token probabilities. Plain arrays in, a PNG out; no model here."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocketgpt.errors import UserError


@contextlib.contextmanager
def _pyplot():
    """matplotlib.pyplot on the Agg backend, quiet about glyphs its font lacks (CJK, emoji in token labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing", category=UserWarning)
        yield plt


def plot_run(run_dir: Path | str, out: Path | str | None = None) -> Path:
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise UserError(f"no metrics.jsonl in {run_dir}: not a training run folder")
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    if not rows:
        raise UserError(f"{metrics} is empty: nothing to plot yet")
    with _pyplot() as plt:
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
        return _save(plt, fig, Path(out) if out else run_dir / "loss.png")


def plot_attention(
    weights: np.ndarray,
    mean: np.ndarray,
    labels: Sequence[str],
    *,
    heads: Sequence[int],
    title: str,
    mean_title: str = "mean of the heads",
    out: Path | str,
) -> Path:
    """One layer's attention: a heatmap per head (weights (H, T, T), row i = how query i spreads its attention over
    keys 0..i) and one of `mean` (T, T), small multiples on one colour scale, 0..1. Cells above the diagonal (the
    masked future) stay blank. `labels`: the T tokens, written on the axes when there are few enough to read."""
    weights, mean = np.asarray(weights, dtype=np.float64), np.asarray(mean, dtype=np.float64)
    T = mean.shape[-1]
    panels = [(f"head {h}", weights[i]) for i, h in enumerate(heads)] + [(mean_title, mean)]
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    side = min(max(2.6, 0.22 * T + 1.2), 8.0)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    with _pyplot() as plt:
        fig, axes = plt.subplots(
            rows, cols, figsize=(side * cols + 1.2, side * rows + 0.8), dpi=100, squeeze=False, layout="constrained"
        )
        image = None
        for ax, (name, w) in zip(axes.flat, panels):
            image = ax.imshow(np.where(future, np.nan, w), vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
            ax.set_title(name, fontsize=9)
            if T <= 40:
                ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
                ax.set_yticks(range(T), labels, fontsize=6)
            ax.set_xlabel("key (attended to)", fontsize=7)
        for ax in axes[:, 0]:
            ax.set_ylabel("query (attending)", fontsize=7)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(title, fontsize=10)
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
        return _save(plt, fig, out)


def plot_next_token(
    labels: Sequence[str],
    p_next: Sequence[float],
    p_top: Sequence[float],
    last_top: Sequence[tuple[str, float]],
    *,
    after: str,
    out: Path | str,
) -> Path:
    """Two panels. Left: at each position t < T-1, the probability the model gave the token that actually came next
    (bars, labelled with that token; log scale) and its most likely token's (dots). Right: the top-k next tokens after
    the last one (`last_top`: (label, probability), most likely first)."""
    n = len(p_next)
    with _pyplot() as plt:
        fig, (left, right) = plt.subplots(
            1,
            2,
            figsize=(min(max(6.0, 0.35 * n + 2.5), 18.0) + 4.5, 4.5),
            dpi=100,
            width_ratios=[3, 1.3],
            layout="constrained",
        )
        if n:
            x = np.arange(n)
            left.bar(x, p_next, color="tab:blue", label="p(the token that came next)")
            left.plot(x, p_top, "o", color="tab:orange", ms=4, label="p(the most likely token)")
            if n <= 60:
                left.set_xticks(x, labels[1 : n + 1], rotation=90, fontsize=6)
            left.set_xlabel("the token that came next", fontsize=8)
            left.set_yscale("log")  # an untrained model's 1/V and a trained one's 0.9 both show
            left.set_ylim(min(min(p_next), min(p_top)) / 2, 1.5)
            left.legend(loc="best", fontsize=7)
        else:
            left.text(0.5, 0.5, "one token: nothing came after it", ha="center", va="center", transform=left.transAxes)
        left.set_ylabel("probability (softmax of the logits, log scale)")
        left.set_title("next-token probability at each position", fontsize=10)
        left.grid(axis="y", alpha=0.3)
        names = [t for t, _ in last_top][::-1]
        values = [p for _, p in last_top][::-1]
        right.barh(range(len(names)), values, color="tab:green")
        for y, v in enumerate(values):
            right.text(v + 0.01, y, f"{v:.3g}", va="center", fontsize=7)
        right.set_yticks(range(len(names)), names, fontsize=7)
        right.set_xlim(0, 1.0)
        right.set_title(f"after {after}: top {len(names)}", fontsize=10)
        right.set_xlabel("probability")
        return _save(plt, fig, out)


def _save(plt, fig, out: Path | str) -> Path:
    """Write the PNG through a temp name, so a reader never sees half of one."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp)
    finally:
        plt.close(fig)
    tmp.replace(out)
    return out
