"""Learning-rate schedule: a pure function of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math

from pocketgpt.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based).

    With cfg.max_time, decay progress is the larger of the step and the time fractions (`elapsed` seconds
    of training so far), so a run cut short by the clock still ends at the floor.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    # 1) warmup: linear from lr/warmup to lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or cfg.max_steps <= cfg.warmup_steps:
        return peak
    # 2) decay: cosine or linear from lr down to  3) the floor, lr * min_lr_ratio, at the last step (max_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps + 1) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.max_time > 0:
        progress = max(progress, min(1.0, elapsed / cfg.max_time))
    if cfg.schedule == "cosine":
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    return peak - (peak - floor) * progress
