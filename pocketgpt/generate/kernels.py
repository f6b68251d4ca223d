"""Batch-1 matmul kernels chosen by measurement on the machine that runs them, never by a rule measured elsewhere.

Decoding one token multiplies one row by every weight matrix. Which kernel does that fastest depends on the CPU:
the split GEMV (gemv.py) doubled float32 decode speed on an AMD EPYC and halved it on an Intel Xeon with AMX.
So at load, for each weight shape of the model, every candidate is timed on the model's own weights (one row
through every weight of that shape, a few repetitions, the best) and the fastest is used for that shape. Results are
cached per CPU model + torch version + threads + dtype + shape in `$POCKETGPT_CACHE/kernels.json` (default
`~/.cache/pocketgpt/`), so a second load costs nothing.

Candidates on a CPU: `linear` (F.linear: PyTorch's own MKL / oneDNN path), `mv` (`torch.addmv`, the BLAS GEMV
called directly), `split` (the rows in equal chunks through one `torch.bmm`, which spreads a GEMV over the
cores) and `t` (the weight stored transposed, (in, out) row-major, so the row multiplies a row-major matrix: on one
Xeon 1.25x faster for GPT-2's head, slower for its 768 x 3072 projection). A `t` layer holds its own copy of the
weight: where the engine's dtype is the model's, that weight is no longer shared with the caller's model. `packed` (the
weight re-laid out once in oneDNN's blocked format, gemv.PackedLinear) is a candidate where this PyTorch build can
pack the dtype: F.linear re-lays a bf16 weight out on every call, and on an AMD EPYC the packed one read GPT-2's
bf16 weights 1.3-2x faster. A `packed` layer holds that copy beside its weight (twice the memory for those layers,
and it does not follow later in-place changes of the weight: the engine's copy is for decoding). They are timed
interleaved, one call of each in turn, so load from other work on the machine falls on all
of them alike instead of on whichever ran while it lasted (a cache once recorded 3 ms for a 100 µs call that way).
`mode` overrides: `linear`, `mv`, `split` or `t` for every shape. On a GPU there is nothing to choose: `linear`.
`working_copy(model)` is what the engine installs them on: the caller's model is never changed.
What does not live here: the kernels themselves (gemv.py), the decode loop (scheduler.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.device import cpu_info, read_cache, write_cache
from pocketgpt.errors import UserError
from pocketgpt.generate.gemv import (
    MvLinear,
    PackedLinear,
    SplitGemvLinear,
    TransposedLinear,
    is_transposed,
    mv_gemv,
    pack,
    packable,
    packed_linear,
    split_gemv,
    transposed,
)

CLASSES = {
    "linear": nn.Linear,
    "mv": MvLinear,
    "split": SplitGemvLinear,
    "t": TransposedLinear,
    "packed": PackedLinear,
}
MODES = ("auto", *CLASSES)


def candidates(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The kernels worth timing for weights of `dtype` on `device`: on a CPU every one this build can run, on a
    GPU only F.linear."""
    if device.type != "cpu":
        return ["linear"]
    return [k for k in CLASSES if k != "packed" or packable(dtype)]


def working_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s modules that shares its weights: new module objects (so eval mode, a changed dtype, a
    swapped kernel class or an int8 layer's chosen kernel stay on the copy) holding new Parameter objects over the
    same storage, and the same buffers and other tensors (so no weight is copied, and in-place updates of the
    original, e.g. by an optimizer, show in the copy). Tied weights stay tied."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo.setdefault(id(p), nn.Parameter(p.detach(), requires_grad=False))
    for m in model.modules():
        for value in vars(m).values():  # buffers and any other tensors a module keeps (e.g. a packed weight)
            items = value.values() if isinstance(value, dict) else (value,)
            for t in items:
                if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                    memo.setdefault(id(t), t)
    return copy.deepcopy(model, memo)


@dataclass
class Choice:
    kernel: str  # linear | mv | split | t | packed
    us: dict[str, float] = field(default_factory=dict)  # measured microseconds per call, per candidate
    cached: bool = False


CACHE = "kernels.json"


def _key(dtype: torch.dtype, shape: tuple[int, int]) -> str:
    dt = str(dtype).replace("torch.", "")
    return (
        f"{cpu_info()['model']}|torch {torch.__version__}|threads {torch.get_num_threads()}|{dt}|{shape[0]}x{shape[1]}"
    )


def linears(model: nn.Module) -> dict[tuple[int, int], list[nn.Linear]]:
    """The model's Linear layers (plain or with a kernel installed) grouped by weight shape (out, in)."""
    out: dict[tuple[int, int], list[nn.Linear]] = {}
    for m in model.modules():
        if type(m) in CLASSES.values():
            out.setdefault(tuple(m.weight.shape), []).append(m)
    return out


def time_interleaved(runs: dict[str, Callable[[], None]], reps: int = 9) -> dict[str, float]:
    """Seconds of each run's best repetition. Every repetition runs each once, in turn (rotating which goes first),
    so load from other work falls on all alike; the first round warms up and is not counted."""
    names = list(runs)
    best = dict.fromkeys(names, float("inf"))
    for r in range(reps + 1):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            runs[k]()
            if r:
                best[k] = min(best[k], time.perf_counter() - t)
    return best


@torch.inference_mode()
def _time(layers: list[nn.Linear], kernels: list[str], chunks: int, reps: int = 9) -> dict[str, float]:
    """Microseconds for one row through one layer, per kernel, timed interleaved (time_interleaved), each run going
    through every layer of the shape (so each weight is read as decoding reads it, not from a cache warmed by the
    same weight)."""
    w0 = layers[0].weight
    x = torch.randn(1, w0.shape[1], dtype=w0.dtype, device=w0.device)
    rows = [(m.weight.contiguous(), m.bias) for m in layers]  # row-major (out, in), as loaded
    laid = {  # the weights as each kernel holds them
        "t": [(transposed(w), b) for w, b in rows] if "t" in kernels else [],  # (in, out) row-major
        "packed": [(pack(w), b) for w, b in rows] if "packed" in kernels else [],  # oneDNN's blocked layout
    }
    calls = {
        "linear": lambda w, b: F.linear(x, w, b),
        "mv": lambda w, b: mv_gemv(x, w, b),
        "split": lambda w, b: split_gemv(x, w, b, chunks),
        "t": lambda w, b: F.linear(x, w, b),
        "packed": lambda w, b: packed_linear(x, w, b),
    }
    runs = {k: lambda k=k: [calls[k](w, b) for w, b in laid.get(k, rows)] for k in kernels}
    return {k: 1e6 * v / len(layers) for k, v in time_interleaved(runs, reps).items()}


MARGIN = 0.95  # another kernel replaces F.linear only when it is at least 5% faster: a tie keeps PyTorch's own


def pick(us: dict[str, float]) -> str:
    best = min(us, key=us.get)
    return best if best == "linear" or us[best] < MARGIN * us.get("linear", float("inf")) else "linear"


def choose(model: nn.Module, mode: str = "auto", *, use_cache: bool = True) -> dict[tuple[int, int], Choice]:
    """Pick and install a kernel per weight shape of `model` (in place: a plain nn.Linear becomes a SplitGemvLinear
    where `split` won, and back; a `t` layer's weight is re-laid out, `install`). Returns shape -> Choice with the
    timings that decided it."""
    if mode not in MODES:
        raise UserError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
    groups = linears(model)
    if not groups:
        return {}
    p = next(model.parameters())
    names = candidates(p.device, p.dtype)
    if mode not in ("auto", *names):
        where = f"this PyTorch build on {p.device.type}" if p.device.type == "cpu" else "the weights on a CPU"
        raise UserError(
            f"kernels={mode} needs {where} (these are {str(p.dtype).replace('torch.', '')} on {p.device.type})"
        )
    chunks = max(2, torch.get_num_threads())
    cache = read_cache(CACHE) if use_cache and mode == "auto" else {}
    dirty, out = False, {}
    for shape, layers in groups.items():
        if mode != "auto" or len(names) == 1:
            out[shape] = Choice(mode if mode != "auto" else names[0])
        else:
            key = _key(p.dtype, shape)
            hit = cache.get(key)  # an entry that timed other candidates (an older pocketgpt) is measured again
            if isinstance(hit, dict) and hit.get("kernel") in names and set(hit.get("us", ())) == set(names):
                out[shape] = Choice(hit["kernel"], dict(hit["us"]), cached=True)
            else:
                us = _time(layers, names, chunks)
                out[shape] = Choice(pick(us), us)
                cache[key] = {"kernel": out[shape].kernel, "us": us}
                dirty = True
        for m in layers:
            install(m, out[shape].kernel, chunks)
    if dirty and use_cache:
        write_cache(CACHE, cache)
    return out


def install(m: nn.Linear, kernel: str, chunks: int = 2) -> None:
    """Make `m` use `kernel`: its class, and its weight's layout (transposed for `t`, row-major otherwise; a
    weight shared by several modules, e.g. a head tied to the embedding, is re-laid out once for all)."""
    m.__class__ = CLASSES[kernel]
    if m.__class__ is SplitGemvLinear:
        m.chunks = chunks
    m.__dict__.pop("packed", None)
    if (kernel == "t") != is_transposed(m.weight):
        with torch.no_grad():
            m.weight.data = transposed(m.weight.data) if kernel == "t" else m.weight.data.contiguous()
    if kernel == "packed":
        m.packed = pack(m.weight)


def describe(choices: dict[tuple[int, int], Choice]) -> list[str]:
    """One line per shape: the kernel and why (µs per call of each candidate, or where the choice came from)."""
    lines = []
    for (o, i), c in sorted(choices.items()):
        why = " · ".join(f"{k} {v:.1f} µs" for k, v in c.us.items()) if c.us else "the only candidate / forced"
        lines.append(f"  {o:>6d} x {i:<6d} {c.kernel:6s} ({why}{', cached' if c.cached else ''})")
    return lines


def summary(choices: dict[tuple[int, int], Choice]) -> str:
    """A short label for tables: e.g. `mv 3/5 split 1/5` (3 of 5 shapes through addmv, 1 split) or `linear`."""
    parts = [
        f"{k} {n}/{len(choices)}"
        for k in CLASSES
        if k != "linear" and (n := sum(c.kernel == k for c in choices.values()))
    ]
    return " ".join(parts) or "linear"
