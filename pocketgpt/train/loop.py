"""ONE training loop for pre-training and fine-tuning.

The loop knows a model whose forward(*batch) returns (logits, loss), a `batches.get(step, micro)` source
(a tuple, (x, y) for language modelling) with a `block_size`,
an `evaluate()` callback and a run folder. Pre-training and fine-tuning differ only in those (the data
iterator and the loss mask), never in a copied loop. It does: warmup + decay schedule, gradient
accumulation, bf16 autocast where native, clipping, periodic evaluation, atomic checkpoints with the
full training state (optimizer, every RNG, step), exact resume, metrics.jsonl, a progress bar, and a
clean stop on Ctrl-C / SIGTERM (checkpoint saved, then return).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pocketgpt.config import TrainConfig
from pocketgpt.device import autocast
from pocketgpt.model.gpt import set_attention_kernel
from pocketgpt.train.autotune import attention_kernel
from pocketgpt.train.distributed import Dist, full_state, load_optimizer_state, unwrap
from pocketgpt.train.optim import build_optimizer
from pocketgpt.train.schedule import lr_at

METRICS = "metrics.jsonl"


@dataclass
class LoopResult:
    step: int
    interrupted: bool
    train_loss: float
    last_eval: dict = field(default_factory=dict)
    tokens_per_sec: float = 0.0


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to save and stop after the current step; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested, self._old = False, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            f"\n{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping "
            "(Ctrl-C again to abort)"
        )

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train_loop(
    model: torch.nn.Module,
    batches,
    cfg: TrainConfig,
    run_dir: Path | str,
    *,
    save: Callable[[str, int, dict, dict], None],
    evaluate: Callable[[], dict] | None = None,
    resume_state: dict | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    flops_per_token: float = 0.0,
    peak_flops: float = 0.0,
    dist: Dist | None = None,
) -> LoopResult:
    """Train `model` from step 0 (or from `resume_state`, a checkpoint's training state) to cfg.max_steps.

    `save(name, step, train_state, weights)` writes a checkpoint (the caller knows the tokenizer and extra metadata);
    `weights` is the full model state dict. Under torchrun (`dist`, from train/distributed.py) `model` is the
    DDP / FSDP-wrapped model, every rank calls `save` (gathering FSDP shards is collective) and rank 0 writes.
    `evaluate()` returns a dict of validation metrics (e.g. {"val_loss", "val_bpb"}).
    """
    run_dir = Path(run_dir)
    device = device if device is not None else torch.device("cpu")
    dist = dist if dist is not None else Dist()
    core = unwrap(model)
    metrics_path = run_dir / METRICS
    optimizer = build_optimizer(model, cfg, device)
    step = 0
    if resume_state is not None:
        load_optimizer_state(dist, model, optimizer, resume_state["optimizer"])
        ranks = resume_state.get("rng_ranks")  # every rank's RNGs (dropout); the same world resumes each exactly
        set_rng_state(ranks[dist.rank] if ranks and len(ranks) == dist.world else resume_state["rng"])
        step = int(resume_state["step"])
    if dist.main:
        _truncate_metrics(metrics_path, step)  # forget lines from after the checkpoint (or from a dead run)
    # every rank's micro-batches: an upper bound with padding
    tokens_per_step = dist.world * cfg.batch_size * cfg.grad_accum * batches.block_size
    if dist.enabled and dist.main:
        print(
            f"global batch {dist.world * cfg.batch_size * cfg.grad_accum} sequences ({dist.world} processes x "
            f"{cfg.batch_size} x {cfg.grad_accum}) per optimizer step"
        )
    time_before = float(resume_state.get("elapsed", 0.0)) if resume_state else 0.0  # training seconds so far
    model.train()
    core.activation_checkpointing = cfg.activation_checkpointing
    core.fused_loss = cfg.fused_loss
    kernel, why = attention_kernel(cfg.attention, core.config, cfg.batch_size, batches.block_size, dtype, device)
    kernel = dist.gather_objects(kernel)[0]  # every rank runs rank 0's choice
    set_attention_kernel(core, kernel)
    if dist.main:
        tqdm.write(f"attention: {kernel} ({why})")
    compiled = torch.compile(model) if cfg.compile else model

    def checkpoint(name: str) -> None:
        weights, optim = full_state(dist, model, optimizer)
        rngs = dist.gather_objects(rng_state())
        state = {
            "optimizer": optim,
            "rng": rngs[0],
            "rng_ranks": rngs,
            "world": dist.world,
            "step": step,
            "data": batches.state_dict(),
            "elapsed": time.perf_counter() - t_start + time_before,
        }
        save(name, step, state, weights)

    def do_eval() -> dict:
        if evaluate is None:
            return {}
        out = evaluate()
        model.train()
        return out

    last_saved, last_eval, loss_val, tok_s = step, {}, float("nan"), 0.0
    interrupted = False
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=None if dist.main else True,
    )
    log_file = open(metrics_path, "a") if dist.main else contextlib.nullcontext()  # noqa: SIM115
    with _StopFlag() as stop, log_file as log:
        t_start = t_last = t_step = time.perf_counter()
        steps_since = 0
        while step < cfg.max_steps:
            elapsed = time.perf_counter() - t_start + time_before
            if cfg.max_time and dist.enabled:  # a clock-driven schedule must give every rank the same lr
                elapsed = dist.mean(elapsed)
            lr = lr_at(step, cfg, elapsed=elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                # (x, y) for language modelling; more for others. Each rank draws its own global micro-batches.
                batch = batches.get(step, dist.micro_index(micro, cfg.grad_accum))
                with dist.no_sync(model, last=micro == cfg.grad_accum - 1):
                    with autocast(device, dtype):
                        _, loss = compiled(*batch)
                    (loss / cfg.grad_accum).backward()  # DDP / FSDP average over ranks on the last micro-batch
                loss_sum += loss.item()
            loss_sum = dist.mean(loss_sum)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"loss became {loss_sum} at step {step}; lower train.lr (now {cfg.lr})")
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
                if cfg.grad_clip > 0
                else float("nan")
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            steps_since += 1
            loss_val = loss_sum / cfg.grad_accum

            now = time.perf_counter()
            step_time, t_step = now - t_step, now
            if now - t_last > 0.5 or step == cfg.max_steps:
                tok_s = tokens_per_step * steps_since / (now - t_last)
                t_last, steps_since = now, 0
            post = {"loss": f"{loss_val:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
            if peak_flops and flops_per_token:
                post["mfu"] = f"{100 * tok_s * flops_per_token / peak_flops:.1f}%"
            bar.set_postfix(post, refresh=False)
            bar.update(1)

            record = None
            time_up = bool(cfg.max_time) and time.perf_counter() - t_start + time_before >= cfg.max_time
            if cfg.log_every and (step % cfg.log_every == 0 or time_up):  # a clock-stopped run logs its last step
                record = {
                    "step": step,
                    "loss": loss_val,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_sec": tok_s,
                    "tokens": step * tokens_per_step,
                    "step_time": step_time,
                }
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
                t_eval = time.perf_counter()
                last_eval = do_eval()
                record = {
                    **(record or {"step": step, "loss": loss_val, "lr": lr, "tokens": step * tokens_per_step}),
                    **last_eval,
                    "eval_time": time.perf_counter() - t_eval,
                }
                if last_eval:
                    tqdm.write(
                        f"step {step:>6d} | train loss {loss_val:.4f} | "
                        + " | ".join(f"{k} {v:.4f}" for k, v in last_eval.items() if isinstance(v, float))
                    )
            if record is not None and dist.main:
                record["elapsed"] = time.perf_counter() - t_start  # wall seconds since this process began training
                record["time"] = time.time()  # unix time: lines up with other processes' clocks
                log.write(json.dumps(record) + "\n")
                log.flush()
            if dist.any(stop.requested):  # every rank stops at the same step (a signal may reach only some)
                interrupted = True
                break
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                checkpoint(f"ckpt-{step:07d}")
                last_saved = step
            if dist.any(time_up) and step < cfg.max_steps:
                tqdm.write(f"train.max_time ({cfg.max_time:g} s) reached at step {step}")
                checkpoint(f"ckpt-{step:07d}")
                last_saved = step
                break
            t_step = time.perf_counter()  # step_time measures the training step, not evals or saves
    bar.close()
    if interrupted and last_saved != step:
        checkpoint(f"ckpt-{step:07d}")
    return LoopResult(
        step=step, interrupted=interrupted, train_loss=loss_val, last_eval=last_eval, tokens_per_sec=tok_s
    )
