"""int8 weight-only quantization: each Linear of the blocks and the head keeps its weight as int8 plus one float
scale per output channel (symmetric, scale = max |w| of the row / 127), and computes in the activations' dtype.

Decoding one token reads every weight once, so a batch-1 token costs about the bytes of the weights: int8 reads a
quarter of float32's. `Int8Linear` runs one of these kernels (which is fastest depends on the CPU;
generate/int8_kernels.py times them per weight shape and sets `layer.kernel`):
  int8pack  torch.ops.aten._weight_int8pack_mm(x, w_int8, scales): PyTorch's weight-only int8 matmul; the weight is
            read as int8, rows are scaled after the dot product; fast with bf16 activations (with float32 ones it
            ran at 1.4 GB/s on a Xeon: a candidate there, never the default)
  fbgemm    torch.ops.quantized.linear_dynamic: FBGEMM's dynamic int8 (the activations are also quantized, per
            tensor, on each call: less exact than int8pack); float32 activations only
  dequant   the reference: int8 -> the activations' dtype (exact), F.linear, times the scales (per output channel,
            so the same as dequantizing first)
`auto` (the default, what several rows use: prefill, evaluation) is int8pack for up to 8 bf16 rows on a CPU and
dequant otherwise; the measured choice is for batch-1 decode, and for every row count when it is fbgemm.

The embeddings stay float: a head tied to wte gets its own int8 copy, wte keeps the float matrix.
`quantize_model(model)` swaps the layers in place; `quantize_model(model, empty=True)` only builds the structure
(the checkpoint loader fills it from `<name>.weight_int8` / `<name>.scale`). `.to(dtype)` converts the float
tensors (bias, norms, embeddings) and leaves the int8 weights as int8 and the scales float32.
What does not live here: timing and choosing kernels (generate/kernels.py), the checkpoint format (checkpoint.py),
the quality gate (quantize.py).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.errors import UserError

SCHEME = {"bits": 8, "scheme": "per-channel-absmax"}  # what config.json records under "quantized"
KERNELS = ("auto", "int8pack", "fbgemm", "dequant")
QMAX = 127  # symmetric: -127..127 (-128 unused, so w and -w quantize alike)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in) and float32 scales (out,) with w ~= q * scale[:, None], per output row:
    scale = max |w_row| / 127, q = round(w / scale) (an all-zero row gets scale 1 and zeros)."""
    w = w.detach().float()
    absmax = w.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / QMAX, torch.ones_like(absmax))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def has_int8pack() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as int8 (out, in) `weight_int8` and float32 (out,) `scale` buffers."""

    kernel = "auto"  # for single rows (batch-1 decode): auto | int8pack | fbgemm | dequant

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._cache: dict = {}  # scales in the activations' dtype, FBGEMM's packed weight: derived, never saved

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device)
        q, s = quantize_weight(w)
        m.weight_int8.copy_(q)
        m.scale.copy_(s)
        if linear.bias is not None:
            m.bias.data = linear.bias.detach().clone()
        return m

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.weight_int8, self.scale, dtype)

    def scales(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._cache:
            self._cache[dtype] = self.scale.to(dtype)
        return self._cache[dtype]

    def _apply(self, fn, recurse=True):
        """.to(dtype) / .to(device): int8 stays int8 (torch converts only float tensors); the scales follow the
        device but stay float32 (a bf16 scale would add up to 0.2% error per output channel)."""
        scale = self.scale
        out = super()._apply(fn, recurse)
        self.scale = scale.to(fn(torch.zeros(1, device=scale.device)).device)  # where fn sends a float tensor
        self._cache = {}
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        # the measured kernel is for one row; FBGEMM's is a GEMM too, and keeps prefill's numerics those of decode
        kernel = self.kernel if x2.shape[0] == 1 or self.kernel == "fbgemm" else "auto"
        return run_kernel(kernel, x2, self).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


PACK_ROWS = 8  # int8pack is a matrix-vector kernel: past ~16 rows int8 -> bf16 + one GEMM wins (measured, 2-core Xeon)


def default_kernel(x2: torch.Tensor) -> str:
    """The rule when nothing was measured: int8pack for a few bf16 rows on a CPU, else dequantize + F.linear.
    (int8pack with float32 activations runs at ~1.3 GB/s on a Xeon, 7x slower than dequant: not a default.)"""
    few = x2.shape[0] <= PACK_ROWS
    return (
        "int8pack" if few and x2.device.type == "cpu" and x2.dtype == torch.bfloat16 and has_int8pack() else "dequant"
    )


def run_kernel(kernel: str, x2: torch.Tensor, m: Int8Linear) -> torch.Tensor:
    """One kernel on rows x2 (rows, in) -> (rows, out) in x2's dtype."""
    if kernel == "auto":
        kernel = default_kernel(x2)
    if kernel == "int8pack":
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), m.weight_int8, m.scales(x2.dtype))
        return y if m.bias is None else y + m.bias.to(y.dtype)
    if kernel == "fbgemm":
        y = torch.ops.quantized.linear_dynamic(x2.float().contiguous(), _fbgemm_packed(m), True)
        return y.to(x2.dtype)
    if kernel == "dequant":  # int8 -> x's dtype is exact (|q| <= 127); the per-row scale applies to the output
        y = F.linear(x2, m.weight_int8.to(x2.dtype)) * m.scales(x2.dtype)
        return y if m.bias is None else y + m.bias.to(y.dtype)
    raise ValueError(f"unknown int8 kernel {kernel!r}; one of {', '.join(KERNELS)}")


def _fbgemm_packed(m: Int8Linear):
    """FBGEMM's prepacked weight (a second int8 copy in its own layout), made once per layer when first used."""
    packed = m._cache.get("fbgemm")
    if packed is None:
        with warnings.catch_warnings():  # torch deprecates quantized tensors (their creation warns)
            warnings.simplefilter("ignore")
            zero = torch.zeros(m.out_features, dtype=torch.long)
            qw = torch._make_per_channel_quantized_tensor(m.weight_int8.cpu(), m.scale.double().cpu(), zero, 0)
            bias = m.bias.detach().float().cpu() if m.bias is not None else None
            packed = m._cache["fbgemm"] = torch.ops.quantized.linear_prepack(qw, bias)
    return packed


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every Linear of the transformer blocks and the output head."""
    found = []
    roots = [("transformer.h", model.transformer.h)] if hasattr(model, "transformer") else []
    for prefix, root in roots:
        for name, mod in root.named_modules():
            for attr, child in mod.named_children():
                if isinstance(child, nn.Linear):
                    found.append((mod, attr, child, f"{prefix}.{name}.{attr}" if name else f"{prefix}.{attr}"))
    if isinstance(getattr(model, "lm_head", None), nn.Linear):
        found.append((model, "lm_head", model.lm_head, "lm_head"))
    return found


def quantize_model(model: nn.Module, *, empty: bool = False) -> list[str]:
    """Replace every nn.Linear of the blocks and the head with an Int8Linear, in place; the names replaced.
    `empty`: the structure only, int8 zeros (a checkpoint's tensors are loaded into it next)."""
    targets = _targets(model)
    lora = [name for _, _, layer, name in targets if hasattr(layer, "lora_A")]
    if lora:
        raise UserError(f"cannot quantize LoRA layers ({lora[0]}, ...): merge the adapter first (pocketgpt merge)")
    for parent, attr, layer, _ in targets:
        if empty:
            q = Int8Linear(layer.in_features, layer.out_features, layer.bias is not None, device=layer.weight.device)
        else:
            q = Int8Linear.from_linear(layer)
        q.train(layer.training)
        setattr(parent, attr, q)
    return [name for *_, name in targets]


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def int8_layers(model: nn.Module) -> dict[tuple[int, int], list[Int8Linear]]:
    """The model's Int8Linear layers grouped by weight shape (out, in)."""
    out: dict[tuple[int, int], list[Int8Linear]] = {}
    for m in model.modules():
        if isinstance(m, Int8Linear):
            out.setdefault((m.out_features, m.in_features), []).append(m)
    return out
