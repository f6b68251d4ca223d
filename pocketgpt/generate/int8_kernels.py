"""The batch-1 kernel of each int8 weight shape (model/quant.py), timed on the machine that runs it, as kernels.py
does for float weights (the same key, plus `int8|`, in its own cache file `int8_kernels.json`).

Candidates, by the activations' dtype: bf16 (CPUs with native bf16) -> `int8pack` (aten._weight_int8pack_mm) and
`dequant` (int8 -> bf16, F.linear, times the scales); float32 (CPUs without) -> `dequant`, `fbgemm` (FBGEMM dynamic
int8, where PyTorch has the engine: it also quantizes the activations) and `int8pack`. A candidate replaces the
first (the default) only when at least 5% faster. On a GPU nothing is timed (`auto`).
Measured on a 2-core Xeon (AMX), GPT-2 shapes, one row: int8pack bf16 10-15 GB/s of int8 weight, fbgemm 11-24,
dequant 0.7-2.6, int8pack float32 1.4 (benchmarks/quantize.py).
`int8_activation_dtype(device)`: what a quantized model computes in, bf16 where native and float32 elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pocketgpt.device import native_bf16, read_cache, write_cache
from pocketgpt.generate.kernels import MARGIN, Choice, _key, time_interleaved
from pocketgpt.model.quant import Int8Linear, has_int8pack, int8_layers, run_kernel

CACHE = "int8_kernels.json"  # beside kernels.json in $POCKETGPT_CACHE (default ~/.cache/pocketgpt)


def int8_activation_dtype(device: torch.device | str) -> torch.dtype:
    """The int8 kernels' fast activations: bf16 where the hardware has it natively, float32 elsewhere."""
    return torch.bfloat16 if native_bf16(torch.device(device)) else torch.float32


def candidates(dtype: torch.dtype, device: torch.device) -> list[str]:
    """The kernels to time, the default (what a tie keeps) first."""
    if device.type != "cpu":
        return ["auto"]
    engines = getattr(torch.backends.quantized, "supported_engines", [])
    fbgemm = ["fbgemm"] if "fbgemm" in engines or "x86" in engines else []
    if dtype != torch.float32:
        # FBGEMM also quantizes the activations (per tensor): it is timed like the rest, and quantize's gate measures
        # the quality of whatever wins (on an AMX Xeon it was 1.6x faster than bf16 int8pack: benchmarks/README.md)
        return (["int8pack"] if has_int8pack() else []) + ["dequant"] + fbgemm
    return ["dequant"] + fbgemm + (["int8pack"] if has_int8pack() else [])


@torch.inference_mode()
def time_kernels(layers: list[Int8Linear], kernels: list[str], dtype: torch.dtype, reps: int = 7) -> dict[str, float]:
    """Microseconds for one row through one layer, per kernel: every layer of the shape each run, the kernels timed
    interleaved (kernels.time_interleaved; its warm-up round is where FBGEMM packs its weights)."""
    x = torch.randn(1, layers[0].in_features, dtype=dtype, device=layers[0].weight_int8.device)
    runs = {k: lambda k=k: [run_kernel(k, x, m) for m in layers] for k in kernels}
    return {k: 1e6 * v / len(layers) for k, v in time_interleaved(runs, reps).items()}


def pick(us: dict[str, float], default: str) -> str:
    best = min(us, key=us.get)
    return best if best == default or us[best] < MARGIN * us.get(default, float("inf")) else default


def choose_int8(model: nn.Module, mode: str = "auto", *, use_cache: bool = True) -> dict[tuple[int, int], Choice]:
    """Time and set `kernel` on every Int8Linear of `model`, per weight shape; shape -> Choice. A mode other than
    auto (the float kernels' `linear` / `mv` / `split`) leaves the int8 layers on their rule (`auto`), untimed."""
    groups = int8_layers(model)
    if not groups:
        return {}
    p = next(model.parameters())
    dtype, device = p.dtype, p.device
    names = candidates(dtype, device)
    cache = read_cache(CACHE) if use_cache and mode == "auto" else {}
    dirty, out = False, {}
    for shape, layers in groups.items():
        if mode != "auto" or len(names) == 1:
            out[shape] = Choice("auto")
        else:
            key = "int8|" + _key(dtype, shape)
            hit = cache.get(key)
            if isinstance(hit, dict) and hit.get("kernel") in names and set(hit.get("us", ())) == set(names):
                out[shape] = Choice(hit["kernel"], dict(hit["us"]), cached=True)
            else:
                us = time_kernels(layers, names, dtype)
                out[shape] = Choice(pick(us, names[0]), us)
                cache[key] = {"kernel": out[shape].kernel, "us": us}
                dirty = True
        for m in layers:
            m.kernel = out[shape].kernel
            if m.kernel != "fbgemm":
                m._cache.pop("fbgemm", None)  # its packed copy of the weight, made while timing
    if dirty and use_cache:
        write_cache(CACHE, cache)
    return out
