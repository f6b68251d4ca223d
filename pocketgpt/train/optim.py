"""Optimizers and their parameter groups.

AdamW decays only matrices that multiply activations (Linear weights); biases, norm gains and embedding
tables are not decayed. With tied embeddings the shared matrix counts as an embedding.

`train.optimizer=muon` trains the transformer blocks' 2-D weight matrices with Muon (Jordan et al. 2024,
"MomentUpdate orthogonalized by Newton-Schulz"): SGD-momentum whose update is replaced by the nearest
semi-orthogonal matrix, so every direction of the matrix moves at the same rate. Embeddings, the output
head, norms and biases stay on AdamW (Muon is for hidden matrices only). The loop sets one learning rate
per step; each group carries `lr_scale`, its peak rate over `train.lr`, so one schedule drives both.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pocketgpt.config import TrainConfig
from pocketgpt.device import native_bf16


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz iteration towards U V^T for G = U S V^T (the quintic of Jordan et al.).

    The coefficients make the map converge fast from small singular values rather than exactly: the
    result's singular values land in roughly [0.7, 1.2], which is what Muon needs. Works in G's dtype, on
    one matrix (r, c) or a stack of them (n, r, c).
    """
    if g.dim() not in (2, 3):
        raise ValueError(f"orthogonalize needs a matrix or a stack of matrices, got shape {tuple(g.shape)}")
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm = 1
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: Nesterov momentum, orthogonalised, scaled by sqrt(max(1, rows/cols)).

    Matrices of one shape are orthogonalised together as a batch (one bmm per Newton-Schulz step instead
    of one small matmul per layer), in `ns_dtype` (bf16 where the hardware has it, as in the reference).
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D weight matrices only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault((tuple(p.shape), p.device), []).append(p)
            for (shape, _), params in by_shape.items():
                grads = [p.grad for p in params]
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_lerp_(bufs, grads, 1 - mom)  # EMA of gradients
                nesterov = torch.stack(grads).lerp_(torch.stack(bufs), mom)  # Nesterov look-ahead
                updates = orthogonalize(nesterov.to(self.ns_dtype), group["ns_steps"])
                if wd:
                    torch._foreach_mul_(params, 1 - lr * wd)
                scale = -lr * max(1.0, shape[0] / shape[1]) ** 0.5
                torch._foreach_add_(params, list(updates.to(params[0].dtype).unbind(0)), alpha=scale)
        return loss


class Optimizers:
    """Several optimizers stepped as one (Muon + AdamW); what the loop needs of a torch Optimizer."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, this run uses {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """The blocks' 2-D weight matrices: what Muon trains (never embeddings or the output head)."""
    seen, out = set(), []
    for name, p in model.named_parameters():  # GPT's blocks are transformer.h.N (also inside wrappers)
        if "transformer.h." in name and p.requires_grad and p.dim() == 2 and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _adamw(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # fused: one kernel for all tensors (CUDA, and CPU since PyTorch 2.4): ~8% of a small CPU step
    fused = device.type in ("cuda", "cpu") and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused or None)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW over `param_groups`, or Muon for the blocks' matrices + AdamW for the rest (cfg.optimizer)."""
    if cfg.optimizer == "adamw":
        groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
        for g in groups:
            g["lr_scale"] = 1.0
        return _adamw(groups, cfg, device)
    matrices = muon_params(model)
    if not matrices:
        raise ValueError("optimizer=muon found no trainable 2-D weights in transformer blocks (transformer.h.N)")
    in_muon = {id(p) for p in matrices}
    rest = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    for g in rest:
        g["params"] = [p for p in g["params"] if id(p) not in in_muon]
        g["lr_scale"] = 1.0
    rest = [g for g in rest if g["params"]]
    ns_dtype = torch.bfloat16 if native_bf16(device) else torch.float32
    muon = Muon(
        [{"params": matrices, "lr_scale": cfg.muon_lr / cfg.lr}],
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        weight_decay=0.0,
        ns_dtype=ns_dtype,
    )
    return Optimizers(muon=muon, adamw=_adamw(rest, cfg, device))
