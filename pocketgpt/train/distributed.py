"""Training on many processes with torchrun: process group, DDP / FSDP2 wrapping, rank-0 I/O, sharded evaluation.

Everything distributed lives here; the loop asks a `Dist` (world 1 when not launched by torchrun) for:
- `micro_index(micro)`: which global micro-batch this rank draws, so the optimizer sees the same tokens at each step
  whatever the split of world x grad_accum (rank r takes micro-batches r*grad_accum ... r*grad_accum+grad_accum-1);
- `no_sync(model, last)`: gradient sync only on the last micro-batch of a step;
- `mean(x)` / `any(flag)`: the step's loss and the stop flag agreed by every rank;
- `full_state(model, optimizer)`: the usual single-process model and optimizer state (so a checkpoint is the same
  folder at every world size), gathered on every rank, written by rank 0 alone.
Launch: `torchrun --standalone --nproc-per-node N -m pocketgpt train ...`. PyTorch's own engine does the work
(torch.distributed, DistributedDataParallel, torch.distributed.fsdp.fully_shard); nothing here moves tensors by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from pocketgpt.device import physical_cores
from pocketgpt.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str = ""  # "" when no process group
    parallel: str = "none"  # none | ddp | fsdp
    restarts: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT: > 0 after a rank died and the group restarted

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def micro_index(self, micro: int, grad_accum: int) -> int:
        return self.rank * grad_accum + micro

    def no_sync(self, model: nn.Module, last: bool):
        """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
        if self.parallel == "ddp" and not last:
            return model.no_sync()
        if self.parallel == "fsdp":
            model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (training a tokenizer, preparing shards into the cache), then the others
        (which find the cache)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def launched() -> bool:
    """True inside a process torchrun started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init(train_cfg, device_name: str, verbose: bool = True) -> Dist:
    """The process group from torchrun's environment (a world of 1 without torchrun, or with one process).

    Backend: NCCL when the run uses CUDA, gloo otherwise (train.dist_backend overrides); collectives time out after
    train.dist_timeout_s so a lost rank ends the run instead of hanging it. Ranks other than 0 print nothing."""
    if not launched():
        return Dist()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if world == 1:
        if verbose and train_cfg.parallel != "auto":
            print(f"note: one process: train.parallel={train_cfg.parallel} is ignored")
        return Dist(restarts=restarts)
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    backend = train_cfg.dist_backend if train_cfg.dist_backend != "auto" else "nccl" if cuda else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError("train.dist_backend=nccl needs a CUDA GPU on every rank; this machine has none (use gloo)")
    if backend == "nccl" and torch.cuda.device_count() < local_world:
        raise UserError(f"{local_world} processes per node but only {torch.cuda.device_count()} CUDA GPUs here")
    if cuda:
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=train_cfg.dist_timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent hosts the store and keeps it across restarts: a restarted group that reads the dead
        # attempt's keys hangs or is refused (half of the restarts measured). A prefix per attempt keeps them apart.
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
        )
        store = dist.PrefixStore(f"pocketgpt/attempt_{restarts}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    parallel = "ddp" if train_cfg.parallel == "auto" else train_cfg.parallel
    if rank != 0:  # rank 0 alone prints; the others speak only when they fail (stderr stays open)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    return Dist(rank, world, local_rank, local_world, backend, parallel, restarts)


def runtime_for(d: Dist, train_cfg, verbose: bool = True):
    """train_cfg with this rank's device and its share of the CPU threads (the split printed once)."""
    from dataclasses import replace

    if not d.enabled:
        return train_cfg
    cfg = replace(train_cfg, device=device_for(d, train_cfg.device), threads=threads_for(d, train_cfg.threads))
    if verbose:
        print(
            f"distributed: {d.world} processes ({d.parallel}, {d.backend}) · {d.local_world} on this node · "
            f"{cfg.threads} threads each of {physical_cores()} physical cores"
        )
    return cfg


def device_for(d: Dist, device_name: str) -> str:
    """Each rank's device: cuda:LOCAL_RANK under torchrun with CUDA, else the configured one."""
    if d.enabled and d.backend == "nccl":
        return f"cuda:{d.local_rank}"
    return device_name


def threads_for(d: Dist, threads: int) -> int:
    """Each process's share of the cores: train.threads, else OMP_NUM_THREADS when the user (not torchrun) set it,
    else physical cores / processes on this node. torchrun sets OMP_NUM_THREADS=1 for every worker when there is more
    than one, which leaves a 16-core box with 2 processes on 2 cores."""
    if threads > 0 or not d.enabled:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 1:  # "1" is torchrun's default for several workers, so it counts as unset
        return int(env)
    return max(1, physical_cores() // d.local_world)


def check_same_config(d: Dist, config: dict) -> None:
    """Every rank must run the same config: compare a hash of it; a mismatch fails on every rank."""
    if not d.enabled:
        return
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    digests = d.gather_objects(digest)
    if len(set(digests)) > 1:
        bad = [r for r, h in enumerate(digests) if h != digests[0]]
        raise UserError(
            f"ranks were started with different configs (ranks {bad} differ from rank 0): launch every "
            "node with the same flags"
        )


def check_world_fits(d: Dist, n: int, what: str) -> None:
    """Every rank needs at least one of the `n` things it is given a share of."""
    if d.enabled and n < d.world:
        raise UserError(f"{what}: {n} cannot be split across {d.world} processes (use fewer processes or more data)")


def check_parallel(d: Dist, train_cfg, *, frozen: bool) -> None:
    """Refuse, before anything is written, what train.parallel=fsdp cannot shard (`frozen`: some parameters do not
    train, as with LoRA)."""
    if not d.enabled or d.parallel != "fsdp":
        return
    if train_cfg.optimizer == "muon":
        raise UserError(
            "train.optimizer=muon with train.parallel=fsdp is not supported (Muon orthogonalises each whole matrix; "
            "FSDP shards them): use train.parallel=ddp, or train.optimizer=adamw"
        )
    if frozen:
        raise UserError(
            "train.parallel=fsdp cannot train a model with frozen parameters (LoRA adapters): use train.parallel=ddp"
        )
    if train_cfg.compile:
        raise UserError("train.compile with train.parallel=fsdp is not supported here: use ddp, or leave compile off")


def wrap(d: Dist, model: nn.Module, train_cfg) -> nn.Module:
    """DistributedDataParallel, or FSDP2 (fully_shard each transformer block, then the root), around `model`."""
    if not d.enabled:
        return model
    if d.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.local_rank] if d.backend == "nccl" else None
        # a classifier never uses the language-model head: DDP must not wait for its gradient
        return DDP(model, device_ids=ids, find_unused_parameters=hasattr(model, "score"))
    check_parallel(d, train_cfg, frozen=any(not p.requires_grad for p in model.parameters()))
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _names_in_optimizer_order(model: nn.Module, optimizer) -> list[str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _optimizers(optimizer) -> dict:
    return getattr(optimizer, "optimizers", None) or {"": optimizer}


def full_state(d: Dist, model: nn.Module, optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) in the single-process format, on every rank (FSDP gathers shards:
    a collective every rank must call). Under DDP and in one process these are the plain state dicts."""
    if d.parallel != "fsdp" or not d.enabled:
        return unwrap(model).state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
    msd = get_model_state_dict(model, options=opts)  # collective: full tensors on rank 0, empty elsewhere
    out = {}
    for name, opt in _optimizers(optimizer).items():
        osd = get_optimizer_state_dict(model, opt, options=opts)
        if not d.main:
            continue
        idx = {n: i for i, n in enumerate(_names_in_optimizer_order(model, opt))}
        groups = [dict(g, params=[idx[n] for n in g["params"]]) for g in osd["param_groups"]]
        out[name] = {"state": {idx[k]: v for k, v in osd["state"].items()}, "param_groups": groups}
    if not d.main:
        return {}, {}
    return msd, out.get("", out) if set(out) == {""} else out


def load_optimizer_state(d: Dist, model: nn.Module, optimizer, state: dict) -> None:
    """Load a single-process optimizer state dict (from any world size) into this run's optimizer."""
    if d.parallel != "fsdp" or not d.enabled:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    parts = _optimizers(optimizer)
    for name, opt in parts.items():
        osd = state if name == "" else state[name]
        names = _names_in_optimizer_order(model, opt)
        fqn = {
            "state": {names[i]: v for i, v in osd["state"].items()},
            "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in osd["param_groups"]],
        }
        set_optimizer_state_dict(model, opt, fqn, options=opts)


def shard_groups(d: Dist, groups: list) -> list[tuple[int, list]]:
    """This rank's share of the evaluation window groups, as (index, group): every rank the same count (FSDP's
    forward is a collective), a rank with fewer real groups repeats group 0 with index -1 (its result dropped)."""
    if not d.enabled:
        return list(enumerate(groups))
    mine = [(i, groups[i]) for i in range(d.rank, len(groups), d.world)]
    rounds = -(-len(groups) // d.world)
    return mine + [(-1, groups[0])] * (rounds - len(mine))


def close(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def restarted_with_checkpoint(d: Dist, out) -> bool:
    """torchrun restarted the group (a rank died) and the run folder holds a checkpoint: resume from it on its own."""
    from pathlib import Path

    from pocketgpt.checkpoint import LATEST

    return d.restarts > 0 and (Path(out) / LATEST).exists()


def evaluate_tokens(d: Dist, model, tokens, token_bytes, *, batch_size: int, max_tokens: int, device, dtype) -> dict:
    """evaluate.evaluate_tokens with the window groups split across ranks: each group's sums are computed by one rank,
    gathered (all-reduce of zeros elsewhere), then added in group order: exactly the single-process value."""
    from pocketgpt.evaluate import eval_windows, loss_sums, metrics_from_sums

    n = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise ValueError(f"need at least 2 tokens to evaluate, got {n}")
    groups = eval_windows(n, model.config.block_size, batch_size)
    mine = shard_groups(d, groups)
    part = loss_sums(model, tokens, token_bytes, [g for _, g in mine], n_tokens=n, device=device, dtype=dtype)
    rows = torch.zeros(len(groups), 4, dtype=torch.float64)  # each group's row from the one rank that ran it
    for (i, _), row in zip(mine, part):
        if i >= 0:
            rows[i] = row
    return metrics_from_sums(d.sum_(rows))  # x + 0 is exact: the all-reduce only collects the rows


def val_metrics(d: Dist, model, tokens, token_bytes, *, batch_size: int, max_tokens: int, device, dtype) -> dict:
    """{"val_loss", "val_bpb"} of a language model on held-out tokens, split across ranks: what pretraining and
    fine-tuning on text log."""
    r = evaluate_tokens(
        d, model, tokens, token_bytes, batch_size=batch_size, max_tokens=max_tokens, device=device, dtype=dtype
    )
    return {"val_loss": r["loss"], "val_bpb": r["bpb"]}


def eval_windows_of(n_tokens: int, block_size: int, batch_size: int) -> list:
    from pocketgpt.evaluate import eval_windows

    return eval_windows(n_tokens, block_size, batch_size)
