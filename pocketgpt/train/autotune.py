"""Training choices that depend on the CPU, decided by a measurement on the machine that trains, not by a rule.

`attention_kernel`: PyTorch's fused attention (SDPA) or the formula as three matmuls (model/attention.py). On the
CPUs measured so far the formula ran a bf16 training step's attention 2-4x faster than SDPA's bf16 kernel, and in
float32 either won by a little depending on the shape and the CPU: a rule measured on some CPUs is only a guess on
the next one. So `train.attention auto` times the forward + backward of one layer's attention at the run's own
shape (micro-batch, heads, context, head size, precision) with both kernels and takes the faster, unless the
formula's T x T weights would not fit comfortably in memory. A few milliseconds, cached per CPU model + torch
version + threads + shape + precision in `$POCKETGPT_CACHE/measurements.json` (device.cached_measurement); on a
GPU, SDPA (its flash kernels) without measuring.
What does not live here: the bf16-or-float32 choice (device.bf16_pays_off), the decode kernels (generate/kernels.py).
"""

from __future__ import annotations

import time

import torch

from pocketgpt.config import ModelConfig
from pocketgpt.device import cached_measurement, cpu_info
from pocketgpt.model.attention import matmul_attention

# the formula must win by this much: SDPA never holds the T x T matrix, so it is the better default on a tie
MATMUL_MIN_SPEEDUP = 1.05
# and it is not considered when every layer's (batch, heads, T, T) weights, kept for the backward, would pass this
MATMUL_MAX_WEIGHT_BYTES = 2 * 2**30


def _time_attention(kernel: str, q, k, v, grad, reps: int) -> float:
    def step():
        q.grad = k.grad = v.grad = None
        if kernel == "matmul":
            y = matmul_attention(q, k, v)
        else:
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y.backward(grad)

    step()  # warm-up: oneDNN builds its kernels for the shape
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_attention(
    batch: int, n_head: int, T: int, head_dim: int, dtype: torch.dtype, device: torch.device, reps: int = 5
) -> dict[str, float]:
    """Seconds (best of `reps`) of one attention forward + backward at (batch, n_head, T, head_dim), per kernel."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, grad = (torch.randn(batch, n_head, T, head_dim, generator=gen).to(device, dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    return {kernel: _time_attention(kernel, q, k, v, grad, reps) for kernel in ("sdpa", "matmul")}


def attention_kernel(
    choice: str, cfg: ModelConfig, batch: int, T: int, dtype: torch.dtype, device: torch.device
) -> tuple[str, str]:
    """The kernel for training at this shape, and why (the timings, or that it was given or needs no measuring)."""
    if choice != "auto":
        return choice, "train.attention"
    if device.type != "cpu":
        return "sdpa", f"{device.type}: fused kernels"
    shape = (batch, cfg.n_head, T, cfg.head_dim)
    held = cfg.n_layer * batch * cfg.n_head * T * T * dtype.itemsize
    if held > MATMUL_MAX_WEIGHT_BYTES:
        return "sdpa", f"the formula would keep {held / 2**30:.1f} GiB of attention weights for the backward"
    key = (
        f"attention sdpa/matmul (additive mask)|{cpu_info()['model']}|torch {torch.__version__}|threads {torch.get_num_threads()}|"
        f"{str(dtype).replace('torch.', '')}|{'x'.join(map(str, shape))}"
    )
    times: dict[str, float] = {}

    def ratio() -> float:
        times.update(measure_attention(*shape, dtype, device))
        return times["sdpa"] / times["matmul"]

    speedup = cached_measurement(key, ratio)
    kernel = "matmul" if speedup >= MATMUL_MIN_SPEEDUP else "sdpa"
    how = (
        f"sdpa {1e3 * times['sdpa']:.2f} ms, matmul {1e3 * times['matmul']:.2f} ms"
        if times
        else f"cached: matmul {speedup:.2f}x sdpa's speed"
    )
    return kernel, f"measured at {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}: {how}"
