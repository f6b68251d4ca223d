"""The one harness around the one training loop: what every run (pretrain, finetune) does before and after it.

Before: refuse to overwrite a run (or find the checkpoint to resume), take the saved config of a resumed run,
set up device, precision and threads, load the resumed training state, write config.yaml.
After: final.json, loss.png, and the message saying how to continue a stopped run.
What does not live here: the loop (loop.py), what a task trains on (pretrain.py, finetune/), argv (cli/).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from pocketgpt.checkpoint import load_train_state, prepare_run_dir
from pocketgpt.config import flatten, from_dict, to_dict, unflatten
from pocketgpt.device import setup_runtime
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_write
from pocketgpt.plot import plot_run
from pocketgpt.train.loop import LoopResult

CONFIG = "config.yaml"
# set from the tokenizer, or given as the command's argument: never inherited from a saved config
NOT_INHERITED = ("model.vocab_size", "checkpoint")


def saved_config(out: Path | str) -> dict[str, Any] | None:
    """A run folder's config.yaml as dotted keys (without the keys a resumed run never inherits); None if absent."""
    path = Path(out) / CONFIG
    if not path.exists():
        return None
    try:
        saved = flatten(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({e.__class__.__name__}); fix or remove it") from None
    for key in NOT_INHERITED:
        saved.pop(key, None)
    return saved


def inherit_saved_config(run: Any, out: Path | str) -> Any:
    """A resumed run's config: the saved config.yaml, with every field of `run` that differs from its default on top.

    This is what `pocketgpt train --out DIR --resume --train.max_steps 4000` means on the command line (flags not
    given come from the run's config.yaml), so `pretrain(TrainRun(out=DIR, train=TrainConfig(max_steps=4000)),
    resume=True)` from Python resumes the same run the same way."""
    saved = saved_config(out)
    if saved is None:
        return run
    defaults = flatten(to_dict(type(run)()))
    given = {k: v for k, v in flatten(to_dict(run)).items() if k not in NOT_INHERITED and defaults.get(k) != v}
    merged = unflatten({**{k: v for k, v in saved.items() if k in defaults}, **given})
    return from_dict(type(run), {k: v for k, v in merged.items() if k != "checkpoint"})


@dataclass
class RunStart:
    out: Path
    resume_from: Path | None  # the checkpoint to resume from (None: a fresh run)
    device: torch.device
    dtype: torch.dtype


def open_run(out: Path | str, resume: bool, train_cfg, verbose: bool = True) -> RunStart:
    """Check the run folder (a run already there needs resume), then set up device, precision and threads."""
    out = Path(out)
    resume_from = prepare_run_dir(out, resume)
    device, dtype = setup_runtime(train_cfg, verbose)
    return RunStart(out, resume_from, device, dtype)


def resume_state(resume_from: Path) -> dict:
    """The training state (optimizer, RNGs, step, data position) of the checkpoint a run resumes from."""
    state = load_train_state(resume_from)
    if state is None:
        raise UserError(f"cannot resume: {resume_from} holds weights but no training state (train_state.pt)")
    return state


def write_config(out: Path, config: dict) -> None:
    """The resolved config next to the run's outputs (what --resume inherits)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CONFIG, yaml.safe_dump(config, sort_keys=False))


def finish_run(out: Path, result: LoopResult, final: dict | None, *, resume_hint: str, verbose: bool = True) -> Path:
    """final.json (when the run finished), loss.png, and how to continue a stopped run. Returns the PNG's path."""
    if not result.interrupted and final is not None:
        atomic_write(out / "final.json", json.dumps({"step": result.step, **final, "time": time.time()}, indent=2))
    png = plot_run(out)
    if verbose and result.interrupted:
        print(f"stopped at step {result.step}; checkpoint saved. Continue with: {resume_hint}")
    return png
