"""The engine: the model calls of generation (prefill the prompts into a KV cache, decode one token per row), and
`generate` / `stream`, which run the one decode loop (scheduler.py + rows.py) synchronously.

`Engine(model)` drives its own working copy of the model (the caller's is never changed: see __init__); it takes
and yields token ids and knows nothing of strings, HTTP or argv (stop strings are checked by the caller through
`should_stop`). Through the scheduler it does:
- batches of prompts of different lengths (left padding, per-row positions, a padding mask in the cache);
  each row gives what that prompt gives alone;
- `num_samples` samples per prompt sharing one prefill, each row with its own seeded generator, so a
  request repeats exactly whatever else is in the batch;
- every sampling option in `SampleConfig` (via the pure functions in sampling.py), log-probabilities;
- prompts longer than the context keep their last tokens; past the context each row's window slides;
- speculative decoding (`SampleConfig.speculative`, `Engine(model, draft=...)`: speculative.py).
Beam search (Hugging Face's semantics) is its own algorithm over `prefill` / `decode` (beam_search.py).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Iterable, Iterator

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.errors import UserError
from pocketgpt.generate.beam_search import beam_search
from pocketgpt.generate.completion import Completion, bucket_length
from pocketgpt.generate.int8_kernels import choose_int8, int8_activation_dtype
from pocketgpt.generate.kernels import choose as choose_kernels
from pocketgpt.generate.kernels import working_copy
from pocketgpt.generate.scheduler import Scheduler
from pocketgpt.generate.speculative import SpecStats, prepare_draft
from pocketgpt.model import KVCache
from pocketgpt.model.quant import is_quantized


class Engine:
    def __init__(
        self,
        model,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        kernels: str = "auto",
        draft=None,
    ):
        """`dtype` is the inference precision of weights and cache; bfloat16 halves the bytes each token reads.
        `kernels`: the batch-1 matmul kernel per weight shape, `auto` = timed on this machine (kernels.py), or
        `linear` / `mv` / `split` / `t` for every shape; `self.kernels` records the choice and its timings.
        `draft`: a smaller model with the same tokenizer for `SampleConfig(speculative="draft")` (moved to this
        device and dtype); `self.spec_stats` tells what the last speculative call drafted and accepted.

        The caller's model is never changed: the engine works on `self.model`, a copy of its modules that shares
        its weights (kernels.working_copy), put in eval mode and converted to `dtype` (only then are the weights
        copied; so is a weight whose chosen kernel stores it transposed, `t`). A quantized model (int8 weights) computes in bf16 where the hardware has it natively and float32
        elsewhere, whatever `dtype` says (its int8 weights stay int8).
        """
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if is_quantized(model):  # int8 weights (model/quant.py): bf16 activations where native, float32 elsewhere
            dtype = int8_activation_dtype(self.device)
        self.dtype = dtype
        self.model = working_copy(model).eval()
        if next(model.parameters()).dtype != dtype:
            self.model.to(dtype)
        self.cfg = model.config
        # oneDNN (CPU bfloat16 / float16 matmuls) keeps a compiled kernel per matrix shape: a server prefilling
        # every prompt length grows by ~0.3-1 MB per new length. `prefill(..., bucket=True)` (the scheduler's)
        # left-pads to `bucket_length` so only a few shapes ever occur. float32 uses MKL, which keeps nothing.
        self.bucket_prefill = self.device.type == "cpu" and dtype != torch.float32
        # batch-1 matmuls: the kernel that measured fastest on this machine, per weight shape (same weights)
        self.kernels = choose_kernels(self.model, kernels)
        self.kernels.update(choose_int8(self.model, kernels))  # int8 layers: timed the same way (int8_kernels.py)
        self.draft = None if draft is None else prepare_draft(draft, self.cfg, self.device, self.dtype, kernels)
        self.spec_stats = SpecStats()

    # --- the two model calls ---------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, contexts: list[list[int]], *, bucket: bool = False) -> tuple[KVCache, torch.Tensor]:
        """Run the prompts (left-padded to one length) through the model; return the cache and last logits (B, V).

        `bucket`: where `self.bucket_prefill`, left-pad to `bucket_length` (the padding is masked: each row's logits
        are what they are unpadded up to rounding, but the cache's `pos` counts the padding)."""
        B, L = len(contexts), max(len(c) for c in contexts)
        if bucket and self.bucket_prefill:
            L = min(self.cfg.block_size, bucket_length(L))
        cache = KVCache(self.cfg, B, dtype=self.dtype, device=self.device)
        idx = torch.zeros(B, L, dtype=torch.long)
        pad = torch.tensor([L - len(c) for c in contexts])
        for b, c in enumerate(contexts):
            idx[b, L - len(c) :] = torch.tensor(c, dtype=torch.long)
        pos = None
        if int(pad.max()) > 0:
            cache.set_padding(pad)
            pos = (torch.arange(L)[None, :] - pad[:, None]).clamp(min=0).to(self.device)  # (B, L)
        h = self.model.hidden(idx.to(self.device), kv_cache=cache, pos=pos)  # (B, L, C)
        return cache, self.model.lm_head(h[:, -1]).float().cpu()  # (B, V) on the CPU, where sampling runs

    @torch.inference_mode()
    def extend(self, cache: KVCache, ids: list[int]) -> torch.Tensor:
        """Feed one row's tokens after what its (one-row, unpadded) cache holds; the last token's logits (1, V).
        The scheduler's prefix cache prefills a prompt's new part this way."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        h = self.model.hidden(idx, kv_cache=cache)  # positions follow the cache
        return self.model.lm_head(h[:, -1]).float().cpu()

    @torch.inference_mode()
    def decode(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Feed one token per row, (B,), at per-row positions (B,) or the cache's; return logits (B, V)."""
        pos = positions[:, None].to(self.device) if positions is not None else None
        h = self.model.hidden(tokens[:, None].to(self.device), kv_cache=cache, pos=pos)  # (B, 1, C)
        return self.model.lm_head(h[:, -1]).float().cpu()

    # --- sampling: the scheduler's loop, driven synchronously -------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        sample: SampleConfig,
        *,
        stop_ids: Iterable[int] = (),
        should_stop: Callable[[int, list[int]], bool] | None = None,
    ) -> list[list[Completion]]:
        """For each prompt, `sample.num_samples` completions (the best beams with beam search).

        `should_stop(row, tokens)` is asked after every token (row = prompt index * num_samples + sample index);
        True ends that row with finish_reason "stop", keeping the token (the caller trims text).
        All rows decode together in one Scheduler batch; each gives what it gives alone.
        """
        if sample.num_beams > 1:
            return [beam_search(self, p, sample, stop_ids) for p in prompts]
        sched, handles = self._submit(prompts, sample, stop_ids, should_stop)
        try:
            while sched.step():
                pass
        finally:
            sched.close()
        want_lp = sample.logprobs or sample.top_logprobs > 0
        rows = []
        for h in handles:
            c = h.result()
            if want_lp and c.logprobs is None:  # no tokens: empty lists, as for any row that asked
                c.logprobs, c.top_logprobs = [], []
            rows.append(c)
        n = sample.num_samples
        return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]

    def stream(
        self,
        prompt: list[int],
        sample: SampleConfig,
        *,
        stop_ids: Iterable[int] = (),
        should_stop: Callable[[int, list[int]], bool] | None = None,
    ) -> Iterator[int]:
        """Yield the new tokens of one prompt as they are chosen (a stop token is not yielded)."""
        if sample.num_beams > 1 or sample.num_samples > 1:
            raise ValueError("streaming yields one sequence: use num_beams=1 and num_samples=1")
        sched, (handle,) = self._submit([prompt], sample, stop_ids, should_stop)
        try:
            while True:
                busy = sched.step()
                for tok in handle.drain():
                    yield tok.id
                if handle.done or not busy:
                    return
        finally:  # also when the consumer stops early (a stop string, Ctrl-C)
            sched.close()

    def _submit(self, prompts, sample: SampleConfig, stop_ids, should_stop):
        """A Scheduler holding every row of these prompts at once, and their handles in prompt x sample order."""
        if sample.speculative == "draft" and self.draft is None:
            raise UserError(
                "speculative='draft' needs a draft model: Engine(model, draft=small_model), "
                "`pocketgpt generate --draft CKPT`"
            )
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty: give at least one token")
        n = sample.num_samples
        sched = Scheduler(self, max_batch=len(prompts) * n, max_queue=len(prompts) * n)
        if sample.speculative != "off":
            self.spec_stats = sched.spec_stats = SpecStats(sample.speculative)
        if sample.seed is None:  # one seed for the call: sample j of every prompt draws from seed + j
            sample = dataclasses.replace(sample, seed=random.getrandbits(62))
        handles = []
        for i, p in enumerate(prompts):
            stop_i = None if should_stop is None else functools.partial(_row_stop, should_stop, i * n)
            handles += sched.submit_all(p, sample, stop_ids, should_stop=stop_i)
        return sched, handles


def _row_stop(should_stop, offset: int, j: int, tokens: list[int]) -> bool:
    return should_stop(offset + j, tokens)  # the scheduler numbers a request's samples j; the engine, every row


def generate_ids(
    model,
    prompt: list[int],
    sample: SampleConfig,
    *,
    stop_ids: Iterable[int] = (),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[int]:
    """Yield new token ids for one prompt, one at a time; a stop token ends generation and is not yielded."""
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    yield from Engine(model, device=device, dtype=dtype).stream(prompt, sample, stop_ids=stop_ids)
