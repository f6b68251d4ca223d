"""Running nanoGPT side by side with pocketgpt, from a checkout the user points at (`--nanogpt PATH`).

Nothing of nanoGPT is copied into this repository: a scratch folder gets symlinks to the checkout's
train.py / model.py / configurator.py / config/, and data/ prepared offline (its own prepare.py for the
character-level Shakespeare set, run with a stub for the `requests` import it never needs once the text
is in place). Its checkpoints are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pocketgpt.evaluate import eval_windows

ITER_LINE = re.compile(r"^iter (\d+): loss ([0-9.]+), time ([0-9.]+)ms")


def check_checkout(path: str | Path) -> Path:
    path = Path(path).expanduser().resolve()
    missing = [f for f in ("train.py", "model.py", "configurator.py", "config") if not (path / f).exists()]
    if missing:
        raise SystemExit(
            f"--nanogpt {path}: not a nanoGPT checkout (missing {', '.join(missing)}); "
            "get one with: git clone https://github.com/karpathy/nanoGPT"
        )
    return path


def workdir(checkout: Path, root: Path) -> Path:
    """A scratch folder where nanoGPT's train.py runs with its relative paths (configurator.py, data/)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py", "configurator.py", "config"):
        link = root / name
        if not link.exists():
            link.symlink_to(checkout / name)
    (root / "stubs").mkdir(exist_ok=True)
    (root / "stubs" / "requests.py").write_text("def get(*a, **k):\n    raise RuntimeError('offline')\n")
    return root


def prepare_char(checkout: Path, root: Path, text_path: Path) -> Path:
    """nanoGPT's own data/shakespeare_char/prepare.py on our copy of the text (90/10 split, uint16, meta.pkl)."""
    d = root / "data" / "shakespeare_char"
    if not (d / "val.bin").exists():
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(text_path, d / "input.txt")
        shutil.copy(checkout / "data" / "shakespeare_char" / "prepare.py", d / "prepare.py")
        subprocess.run(
            [sys.executable, str(d / "prepare.py")],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(root / "stubs")},
        )
    return d


def prepare_ids(root: Path, name: str, train_ids: np.ndarray, val_ids: np.ndarray) -> Path:
    """A dataset of token ids without meta.pkl: nanoGPT then uses GPT-2's vocabulary size (50304)."""
    d = root / "data" / name
    d.mkdir(parents=True, exist_ok=True)
    np.asarray(train_ids, dtype=np.uint16).tofile(d / "train.bin")
    np.asarray(val_ids, dtype=np.uint16).tofile(d / "val.bin")
    return d


def run_train(
    root: Path, args: list[str], *, config: str | None = None, threads: int = 0, timeout: float = 3600
) -> dict:
    """Run nanoGPT's train.py in `root`; returns wall seconds, per-iteration (iter, loss, ms) and stdout."""
    from common import run_process

    cmd = [sys.executable, "train.py"] + ([config] if config else []) + args
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    r = run_process(cmd, cwd=root, env=env, timeout=timeout)
    if r["rc"] != 0:
        raise RuntimeError(f"nanoGPT train.py failed ({r['rc']}):\n{r['out'][-3000:]}")
    iters = [(int(m[1]), float(m[2]), float(m[3])) for m in map(ITER_LINE.match, r["out"].splitlines()) if m]
    return {**r, "iters": iters, "cmd": " ".join(cmd)}


def load_model(checkout: Path, ckpt_path: Path):
    """nanoGPT's GPT from its own model.py with the weights of a checkpoint it wrote."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", checkout / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = mod.GPT(mod.GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    return model.eval(), ckpt


@torch.no_grad()
def whole_split_loss(model, ids: np.ndarray, block_size: int, batch_size: int = 64) -> float:
    """Mean next-token loss (nats) over every target of `ids`, over the very windows pocketgpt's evaluate_tokens
    uses (pocketgpt.evaluate.eval_windows: non-overlapping block_size windows, the shorter last one alone)."""
    ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    n = len(ids)
    total, count = 0.0, 0
    for group in eval_windows(n, block_size, batch_size):
        T = min(block_size, n - 1 - group[0])
        x = torch.stack([ids[s : s + T] for s in group])
        y = torch.stack([ids[s + 1 : s + T + 1] for s in group])
        logits, _ = model(x, y)  # with targets nanoGPT returns logits at every position
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum")
        total += loss.item()
        count += y.numel()
    return total / count
