"""RuntimeConfig: where a model runs, at what precision, on how many threads; and the checks every config uses.

Split from config.py (which re-exports RuntimeConfig) so that file stays one readable page; TrainConfig and
ServeConfig extend RuntimeConfig there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pocketgpt.errors import UserError


def check_ints(obj, names: tuple[str, ...], least: int, prefix: str = "") -> None:
    """Each named field is an integer (not a bool) >= least; else a UserError naming it and the value."""
    what = "a positive integer" if least == 1 else "a non-negative integer"
    for name in names:
        v = getattr(obj, name)
        check(
            isinstance(v, int) and not isinstance(v, bool) and v >= least, f"{prefix}{name} must be {what}, got {v!r}"
        )


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


DEVICES = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


@dataclass
class RuntimeConfig:
    """Where a model runs, at what precision, on how many CPU threads: declared once here, for every command
    (train and finetune as train.device/dtype/threads; generate, chat, eval, classify and serve as --device,
    --dtype, --threads). device.setup_runtime turns it into a torch device and dtype."""

    device: str = "auto"
    """where to run: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """precision: auto = bf16 on CUDA and on CPUs with native bf16 units (AMX / AVX512-BF16), float32 elsewhere
    (training autocasts matmuls; inference converts the weights)"""
    threads: int = 0
    """CPU threads for PyTorch; 0 = automatic (one per physical core this process may use)"""

    def __post_init__(self) -> None:
        d = self.device
        check(
            isinstance(d, str) and (d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())),
            f"device must be {DEVICES}, got {d!r}",
        )
        check(
            self.dtype in ("auto", "float32", "bfloat16"),
            f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}",
        )
        t = self.threads
        check(isinstance(t, int) and not isinstance(t, bool) and t >= 0, f"threads must be an integer >= 0, got {t!r}")
