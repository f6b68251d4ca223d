"""Batch-1 matrix-vector products on CPU: the split GEMV (every core), the plain `addmv` GEMV, and the weight
stored transposed.

Decoding one token multiplies a (1, in) vector by each weight matrix: a memory-bound GEMV. In float32,
PyTorch's CPU GEMV runs on one thread (~21 GB/s measured on a 2-core EPYC), while a streaming read on two
threads reaches ~46 GB/s. Viewing the weight's rows as S equal chunks and calling `torch.bmm` spreads the
chunks over the cores (~40 GB/s measured; benchmarks/generate.py). `torch.addmv` is the BLAS GEMV called
directly: on an Intel Xeon with AMX, F.linear's bf16 row-times-matrix ran at 7-12 GB/s where addmv reached 10-18.

`TransposedLinear` keeps the weight as (in, out) row-major, seen as the usual (out, in) through a view: F.linear
then multiplies the row by a row-major matrix (BLAS's no-transpose GEMM, an axpy per input element) instead of a
dot product per weight row. On an Intel Xeon with AMX that streamed GPT-2's 50257 x 768 head at 23 GB/s where the
row-major weight gave 18; on its 768 x 3072 projection it was slower.

`PackedLinear` keeps, beside the weight, a copy in oneDNN's own blocked layout (`torch.ops.mkldnn.
_reorder_linear_weight`, done once at load) and multiplies through `torch.ops.mkldnn._linear_pointwise`. F.linear
on a plain bf16 weight re-lays it out for oneDNN on every call: on a 2-core AMD EPYC with AVX512-BF16 that ran
GPT-2's bf16 GEMVs at 10-15 GB/s, the packed weight at 18-26 (and the float32 ones at 19-25 against 10-16).

Whether each wins depends on the CPU (2x faster on an AMD EPYC, 2x slower on an Intel Xeon with AMX): kernels.py
times both against F.linear per weight shape and uses one only where it is faster.
`use_split_gemv(model)` switches every nn.Linear of a model to `SplitGemvLinear`: the same parameters and
state-dict keys, a different forward for single rows only. `restore_linear(model)` switches back.
What does not live here: the model's math (model/), the decode loop (engine.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunks: int) -> torch.Tensor:
    """F.linear(x, weight, bias) for one row, with the weight's rows in `chunks` equal parts through one bmm."""
    out, inp = weight.shape
    S = chunks
    even = out - out % S
    # (S, in, 1) with strides (0, 1, in): this layout takes the fast batched kernel (36 GB/s measured);
    # the same values with strides (in, 1, 1) run 3.5x slower
    v = x.reshape(1, inp).t().unsqueeze(0).expand(S, inp, 1)
    y = torch.bmm(weight[:even].view(S, even // S, inp), v).reshape(even)  # (even,)
    if even != out:  # odd rows (a 50257 vocab)
        y = torch.cat([y, weight[even:] @ x.reshape(inp)])
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], out)


def mv_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) for one row, as one BLAS GEMV (`addmv`, or `mv` without a bias)."""
    v = x.reshape(-1)
    y = torch.mv(weight, v) if bias is None else torch.addmv(bias, weight, v)
    return y.view(*x.shape[:-1], weight.shape[0])


def transposed(weight: torch.Tensor) -> torch.Tensor:
    """The same (out, in) values stored (in, out) row-major: a transposed view of a contiguous transpose."""
    return weight.t().contiguous().t()


def is_transposed(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and not weight.is_contiguous() and weight.t().is_contiguous()


def _one_cpu_row(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.numel() == x.shape[-1] and weight.device.type == "cpu" and weight.is_contiguous()


class SplitGemvLinear(nn.Linear):
    chunks = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _one_cpu_row(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        return split_gemv(x, self.weight, self.bias, self.chunks)


class MvLinear(nn.Linear):
    """nn.Linear whose single CPU rows go through `addmv`; everything else through F.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _one_cpu_row(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        return mv_gemv(x, self.weight, self.bias)


def packable(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build can pack a weight of `dtype` for oneDNN and multiply through it (a probe on a tiny
    weight: a build without oneDNN, or a dtype it does not take, says no instead of failing at load)."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ones(8, 16, dtype=dtype)
        y = packed_linear(torch.ones(1, 16, dtype=dtype), pack(w), None)
        return bool(torch.all(y == 16))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) re-laid out once in oneDNN's blocked format for one-row products (an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) with the weight `pack`ed."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """nn.Linear whose single CPU rows multiply a oneDNN-packed copy of the weight (`pack`; kernels.install makes
    it, and drops it when it installs another kernel); everything else through F.linear on the weight itself."""

    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None or not _one_cpu_row(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        return packed_linear(x, self.packed, self.bias)


class TransposedLinear(nn.Linear):
    """nn.Linear whose weight is stored transposed (`transposed`): its forward is nn.Linear's, F.linear(x, W) =
    x @ W.t() with W.t() contiguous. kernels.choose re-lays the weight out when it installs this class (a copy:
    that weight is no longer shared with the model it came from) and back when it installs another."""


def use_split_gemv(model: nn.Module, chunks: int = 0) -> None:
    """Make every plain nn.Linear of `model` a SplitGemvLinear (in place; weights untouched)."""
    n = chunks or max(2, torch.get_num_threads())
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = SplitGemvLinear
            m.chunks = n


def restore_linear(model: nn.Module) -> None:
    for m in model.modules():
        if type(m) in (SplitGemvLinear, MvLinear, TransposedLinear, PackedLinear):
            m.__class__ = nn.Linear
            m.__dict__.pop("packed", None)
            if is_transposed(m.weight):
                m.weight.data = m.weight.data.contiguous()
