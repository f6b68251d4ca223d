"""The engine: prefill the prompts once into a preallocated KV cache, then decode one token per step.

`Engine(model)` owns the KV cache and drives the model; it takes and yields token ids and knows nothing of
strings, HTTP or argv (stop strings are checked by the caller through `should_stop`). It does:
- batches of prompts of different lengths (left padding, per-row positions, a padding mask in the cache);
  each row gives what that prompt gives alone;
- `num_samples` samples per prompt sharing one prefill, each row with its own seeded generator, so a
  request repeats exactly whatever else is in the batch;
- every sampling option in `SampleConfig` (via the pure functions in sampling.py), log-probabilities;
- beam search with Hugging Face's semantics (beam_search.py);
- prompts longer than the context keep their last tokens; past the context the window slides;
- speculative decoding at batch 1 (`SampleConfig.speculative`, `Engine(model, draft=...)`: speculative.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate import sampling as S
from pocketgpt.generate.beam_search import beam_search
from pocketgpt.generate.completion import Completion, bucket_length, crop_prompt
from pocketgpt.generate.int8_kernels import choose_int8, int8_activation_dtype
from pocketgpt.generate.kernels import choose as choose_kernels
from pocketgpt.generate.speculative import SpecStats, prepare_draft, run_speculative
from pocketgpt.model import KVCache
from pocketgpt.model.quant import is_quantized


@dataclass
class _Row:
    """One sequence being decoded."""

    index: int  # position in the flat list of prompt x sample rows
    context: list[int]  # every token the model has seen (prompt + generated)
    generator: torch.Generator
    out: Completion = field(default_factory=lambda: Completion([]))


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
        `linear` / `split` for every shape; `self.kernels` records the choice and its timings.
        `draft`: a smaller model with the same tokenizer for `SampleConfig(speculative="draft")` (moved to this
        device and dtype); `self.spec_stats` tells what the last speculative call drafted and accepted.

        The model is converted in place (model.to(dtype)). A quantized model (int8 weights) computes in bf16 where
        the hardware has it natively and float32 elsewhere, whatever `dtype` says (its int8 weights stay int8).
        """
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if is_quantized(model):  # int8 weights (model/quant.py): bf16 activations where native, float32 elsewhere
            dtype = int8_activation_dtype(self.device)
        self.dtype = dtype
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

    # --- sampling ----------------------------------------------------------------------------------
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
        """
        if sample.num_beams > 1:
            return [beam_search(self, p, sample, stop_ids) for p in prompts]
        rows = list(self._run(prompts, sample, stop_ids, should_stop))
        n = sample.num_samples
        return [[rows[i * n + j] for j in range(n)] for i in range(len(prompts))]

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
        out: list[Completion] = []
        yield from self._run([prompt], sample, stop_ids, should_stop, on_token=True, sink=out)

    def _run(self, prompts, sample: SampleConfig, stop_ids, should_stop, on_token: bool = False, sink=None):
        if sample.speculative != "off":  # batch 1, row after row (speculative.py)
            yield from run_speculative(self, prompts, sample, stop_ids, should_stop, on_token, sink)
            return
        n, temp = sample.num_samples, sample.effective_temperature
        stop = set(stop_ids)
        base_seed = sample.seed if sample.seed is not None else random.getrandbits(62)
        rows = []
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty: give at least one token")
            ctx, _ = crop_prompt(list(p), self.cfg.block_size)
            for j in range(n):
                g = torch.Generator().manual_seed(base_seed + j)
                rows.append(_Row(i * n + j, list(ctx), g))
        want_lp = sample.logprobs or sample.top_logprobs > 0
        for r in rows:
            if want_lp:
                r.out.logprobs, r.out.top_logprobs = [], []
        V = self.cfg.vocab_size
        track = sample.frequency_penalty != 0 or sample.presence_penalty != 0
        counts = torch.zeros(len(rows), V) if track else None
        seen = None
        if sample.repetition_penalty != 1.0:
            seen = torch.zeros(len(rows), V, dtype=torch.bool)
            for k, r in enumerate(rows):
                seen[k, r.context] = True

        if sample.max_new_tokens == 0:
            if not on_token:
                yield from (r.out for r in rows)
            return
        # one prefill per prompt, shared by its n samples
        cache, logits = self.prefill([rows[i * n].context for i in range(len(prompts))])
        if n > 1:
            cache, logits = cache.expand(n), logits.repeat_interleave(n, dim=0)
        active = list(range(len(rows)))  # rows still decoding, in cache order
        positions = torch.tensor([len(rows[k].context) for k in active]) if cache.valid is not None else None
        while True:
            x = logits  # (A, V) float32
            x = S.add_logit_bias(x, sample.logit_bias)
            if seen is not None:
                x = S.repetition_penalty(x, seen[active], sample.repetition_penalty)
            if counts is not None:
                x = S.frequency_presence_penalty(x, counts[active], sample.frequency_penalty, sample.presence_penalty)
            if temp == 0:
                nxt = S.greedy(x)
            else:
                nxt = S.pick_rows(
                    x,
                    [rows[k].generator for k in active],
                    temperature=temp,
                    top_k=sample.top_k,
                    top_p=sample.top_p,
                    min_p=sample.min_p,
                )  # each row its own generator
            if want_lp:
                lp, top_ids, top_vals = S.top_logprobs(logits, nxt, sample.top_logprobs)
            finished = []
            for a, k in enumerate(active):
                tok, r = int(nxt[a]), rows[k]
                if tok in stop:
                    r.out.finish_reason = "stop"
                    finished.append(a)
                    continue
                r.out.tokens.append(tok)
                r.context.append(tok)
                if want_lp:
                    r.out.logprobs.append(float(lp[a]))
                    r.out.top_logprobs.append(list(zip(top_ids[a].tolist(), top_vals[a].tolist())))
                if counts is not None:
                    counts[k, tok] += 1
                if seen is not None:
                    seen[k, tok] = True
                if on_token:
                    yield tok
                if should_stop is not None and should_stop(r.index, r.out.tokens):
                    r.out.finish_reason = "stop"
                    finished.append(a)
                elif len(r.out.tokens) >= sample.max_new_tokens:
                    r.out.finish_reason = "length"
                    finished.append(a)
            if finished:
                done = set(finished)
                keep = [a for a in range(len(active)) if a not in done]
                if not keep:
                    break
                active = [active[a] for a in keep]
                keep_t = torch.tensor(keep)
                cache, nxt = cache.select(keep_t.to(cache.k.device)), nxt[keep_t]
                if positions is not None:
                    positions = positions[keep_t]
            if cache.pos >= cache.max_len:  # context full: slide the window
                window = max(1, self.cfg.block_size // 2)
                cache, logits = self.prefill([rows[k].context[-window:] for k in active])
                positions = (
                    torch.tensor([len(rows[k].context[-window:]) for k in active]) if cache.valid is not None else None
                )
                continue
            logits = self.decode(cache, nxt, positions)
            if positions is not None:
                positions = positions + 1
        if sink is not None:
            sink.extend(r.out for r in rows)
        if not on_token:
            yield from (r.out for r in rows)


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
