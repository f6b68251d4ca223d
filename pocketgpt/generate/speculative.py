"""Speculative decoding at batch 1: a cheap drafter proposes k tokens, the model checks them all in one forward.

Drafters:
- `NgramDrafter` (prompt lookup): the k tokens that followed the latest earlier occurrence of the context's last
  n tokens (n = 3, else 2, else 1); free, and right wherever the text copies itself (quotes, code, repeats);
- `ModelDrafter`: a smaller GPT with the same vocabulary decodes k tokens on its own KV cache.

Verification feeds the model [last token, d1..dk] on its KV cache in one forward: k+1 next-token distributions
p0..pk; the cache then forgets the rejected drafts (`KVCache.rollback`).
- greedy: accept d_i while it is argmax p_{i-1}, then add argmax p_j: the tokens plain greedy decoding gives (the
  (k+1)-token forward rounds differently from one-token forwards, so only an exact near-tie could differ);
- sampling (Leviathan et al. 2023; Chen et al. 2023): accept d_i with probability min(1, p(d_i) / q(d_i)); at the
  first rejection draw from normalize(max(0, p - q)), after k acceptances draw from p_k: the output has exactly
  plain sampling's distribution. For the n-gram drafter q is a point mass on d_i.
p and q are what plain sampling draws from: logit bias, repetition / frequency / presence penalties (the drafted
tokens counted as if generated), temperature, top-k, top-p, min-p, through sampling.py's functions. Draws come from
the row's seeded generator, so a seed repeats the text (not plain sampling's text: the draws differ). Past the
context the window slides where and as plain decoding's does. Each speculative row runs on its own KV cache.
What does not live here: the decode loop (scheduler.py, which runs speculative rows through `decode_row`, one
token per step, beside its batched rows; Engine.generate / stream drive it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.errors import UserError
from pocketgpt.generate import sampling as S
from pocketgpt.generate.completion import Completion, crop_prompt
from pocketgpt.model import KVCache


@dataclass
class SpecStats:
    """What one speculative `generate` / `stream` call did (`Engine.spec_stats`)."""

    mode: str = "off"
    drafted: int = 0  # tokens proposed to the model
    accepted: int = 0  # proposals the model kept
    tokens: int = 0  # tokens generated
    forwards: int = 0  # model passes: prefills + verifications

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def prepare_draft(draft, cfg, device: torch.device, dtype: torch.dtype, kernels: str):
    """The draft model on the engine's device and dtype, its batch-1 kernels chosen; its vocabulary must be the
    model's (a draft model shares the tokenizer)."""
    from pocketgpt.generate.kernels import choose, working_copy

    dv = draft.config.vocab_size
    if dv != cfg.vocab_size:
        raise UserError(
            f"the draft model has a vocabulary of {dv} tokens, the model {cfg.vocab_size}: "
            "a draft model must use the same tokenizer"
        )
    draft = working_copy(draft).eval().to(device=device, dtype=dtype)  # the caller's draft model stays as it was
    choose(draft, kernels)
    return draft


@torch.inference_mode()
def _forward(model, cache: KVCache, tokens: list[int], device, last: bool = False) -> torch.Tensor:
    """Feed tokens (one row) after what the cache holds; logits (T, V) float32 on the CPU (only the last: (1, V))."""
    h = model.hidden(torch.tensor([tokens], dtype=torch.long, device=device), kv_cache=cache)[0]  # (T, C)
    return model.lm_head(h[-1:] if last else h).float().cpu()


class _Adjust:
    """Logit bias and penalties over the row's text, as plain decoding applies them before sampling."""

    def __init__(self, sample: SampleConfig, context: list[int], vocab: int):
        self.bias, self.rep = sample.logit_bias, sample.repetition_penalty
        self.freq, self.pres = sample.frequency_penalty, sample.presence_penalty
        self.seen = None
        if self.rep != 1.0:
            self.seen = torch.zeros(vocab, dtype=torch.bool)
            self.seen[context] = True
        self.counts = torch.zeros(vocab) if (self.freq != 0 or self.pres != 0) else None

    def __call__(self, logits: torch.Tensor, drafted: list[int], start: int) -> torch.Tensor:
        """Adjusted logits (m, V): row r as if drafted[:start + r] had been generated."""
        x = S.add_logit_bias(logits, self.bias)
        m = x.shape[0]
        if self.seen is not None:
            seen = self.seen.repeat(m, 1)
            for i, t in enumerate(drafted[: start + m - 1]):
                seen[max(0, i + 1 - start) :, t] = True
            x = S.repetition_penalty(x, seen, self.rep)
        if self.counts is not None:
            counts = self.counts.repeat(m, 1)
            for i, t in enumerate(drafted[: start + m - 1]):
                counts[max(0, i + 1 - start) :, t] += 1
            x = S.frequency_presence_penalty(x, counts, self.freq, self.pres)
        return x

    def add(self, tok: int) -> None:
        if self.seen is not None:
            self.seen[tok] = True
        if self.counts is not None:
            self.counts[tok] += 1


class _Chooser:
    """Greedy or seeded sampled choices over adjusted logits, and the verification of drafts."""

    def __init__(self, sample: SampleConfig, generator: torch.Generator):
        self.temp, self.g = sample.effective_temperature, generator
        self.filters = dict(top_k=sample.top_k, top_p=sample.top_p, min_p=sample.min_p)

    def one(self, x: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """A token from x (1, V), and the distribution it came from (None: greedy, a point mass)."""
        if self.temp == 0:
            return int(S.greedy(x)[0]), None
        p = S.distribution(x, temperature=self.temp, **self.filters)[0]
        return int(torch.multinomial(p, 1, generator=self.g)), p

    def verify(self, x: torch.Tensor, drafts: list[int], q: torch.Tensor | None) -> tuple[int, int]:
        """How many drafts the model accepts (j), and its own next token after them. x: adjusted logits
        (len(drafts) + 1, V); q: the draft distributions (len(drafts), V), None for point masses."""
        if self.temp == 0:
            want = S.greedy(x).tolist()
            j = 0
            while j < len(drafts) and drafts[j] == want[j]:
                j += 1
            return j, want[j]
        p = S.distribution(x, temperature=self.temp, **self.filters)
        for i, d in enumerate(drafts):
            qd = 1.0 if q is None else float(q[i, d])
            u = float(torch.rand((), dtype=torch.float64, generator=self.g))
            if u * qd < float(p[i, d]):  # accept with probability min(1, p / q)
                continue
            return i, residual_draw(p[i], d, None if q is None else q[i], self.g)
        return len(drafts), int(torch.multinomial(p[-1], 1, generator=self.g))


def residual_draw(p: torch.Tensor, d: int, q: torch.Tensor | None, g: torch.Generator) -> int:
    """A draw from normalize(max(0, p - q)) after draft d was rejected (q None: the point mass on d)."""
    if q is None:
        r = p.clone()
        r[d] = 0.0
    else:
        r = (p - q).clamp_(min=0.0)
    if not float(r.sum()) > 0:  # p == q up to rounding: rejection had probability ~0
        r = p
    return int(torch.multinomial(r, 1, generator=g))


class NgramDrafter:
    """Prompt lookup: what followed the latest earlier occurrence of the last n tokens (n = max_n .. 1). An index of
    every n-gram's latest position grows with the (append-only) context, so a proposal costs O(k)."""

    def __init__(self, max_n: int = 3):
        self.max_n = max_n
        self.latest: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]
        self.indexed = 0  # ctx[:indexed] is in the index

    def propose(self, ctx: list[int], k: int, adjust=None, choose=None) -> tuple[list[int], None]:
        for e in range(max(1, self.indexed), len(ctx)):  # the n-grams ending before ctx[e], followed by it
            for n in range(1, min(self.max_n, e) + 1):
                self.latest[n][tuple(ctx[e - n : e])] = e
        self.indexed = len(ctx)
        for n in range(min(self.max_n, len(ctx)), 0, -1):
            e = self.latest[n].get(tuple(ctx[-n:]))
            if e is not None:  # copy from e on; past the end, the copy continues itself (a repeating pattern)
                out: list[int] = []
                for i in range(k):
                    out.append(ctx[e + i] if e + i < len(ctx) else out[e + i - len(ctx)])
                return out, None
        return [], None


class ModelDrafter:
    """A smaller model drafting greedily (or sampling, with its q) on its own KV cache, kept in step with the text:
    each call rolls back the drafts the model rejected and feeds the tokens it has not seen."""

    def __init__(self, model, device, dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.block = model.config.block_size
        self.cache: KVCache | None = None
        self.start = 0  # the cache holds fed[i] at position i, fed[i] == ctx[start + i] for i < synced
        self.fed: list[int] = []
        self.synced = 0

    @torch.inference_mode()
    def propose(self, ctx: list[int], k: int, adjust: _Adjust, choose: _Chooser):
        n, k = len(ctx), min(k, self.block)
        if self.cache is None or n - self.start + k - 1 > self.block:  # first call, or full: a new window
            keep = self.block - k + 1 if self.cache is None else max(1, min(self.block // 2, self.block - k + 1))
            self.start = max(0, n - keep)
            self.cache = KVCache(self.model.config, 1, dtype=self.dtype, device=self.device)
            self.fed, self.synced = [], 0
        c = self.synced
        while c < len(self.fed) and self.start + c < n and self.fed[c] == ctx[self.start + c]:
            c += 1
        c = min(c, n - self.start - 1)  # feed at least the last token: its logits give the first draft
        self.cache.rollback(len(self.fed) - c)
        del self.fed[c:]
        new = ctx[self.start + c :]
        logits = _forward(self.model, self.cache, new, self.device, last=True)
        self.fed += new
        self.synced = len(self.fed)
        drafts, qs = [], []
        for i in range(k):
            tok, q = choose.one(adjust(logits, drafts, i))
            drafts.append(tok)
            qs.append(q)
            if i < k - 1:
                logits = _forward(self.model, self.cache, [tok], self.device, last=True)
                self.fed.append(tok)
        return drafts, (None if qs[0] is None else torch.stack(qs))


def advance_rows(rows) -> list:
    """The scheduler's speculative rows (rows.Row objects, each running `decode_row` as `s.spec`): one token each
    (a verification forward only when a row's accepted drafts are used up), handed to its request. Returns the rows
    that finished or were cancelled."""
    from pocketgpt.generate.handles import Token

    done = []
    for s in rows:
        if s.handle._cancelled.is_set():
            s.spec.close()
            s.handle._finish("cancelled")
            done.append(s)
            continue
        try:
            tid = next(s.spec)
        except StopIteration:
            s.handle._finish(s.out.finish_reason or "length")
            done.append(s)
            continue
        tok = Token(tid)
        if s.out.logprobs is not None:
            tok.logprob, tok.top_logprobs = s.out.logprobs[-1], s.out.top_logprobs[-1]
        s.tokens.append(tid)
        s.handle.completion_tokens += 1
        s.handle._put(tok)
        if len(s.tokens) >= s.sample.max_new_tokens:  # end the stream now, not at the next step
            s.spec.close()
            s.handle._finish("length")
            done.append(s)
    return done


def decode_row(engine, prompt, sample, stop, should_stop, index, g, out: Completion, stats: SpecStats):
    """One sequence, speculatively: yields its tokens one by one while filling `out` (tokens, logprobs, finish
    reason) and `stats`. The scheduler's speculative rows drive it (Engine.generate / stream run through those)."""
    bs = engine.cfg.block_size
    ctx, _ = crop_prompt(prompt, bs)
    want_lp = sample.logprobs or sample.top_logprobs > 0
    if want_lp:
        out.logprobs, out.top_logprobs = [], []
    if sample.max_new_tokens == 0:
        return
    adjust, choose = _Adjust(sample, ctx, engine.cfg.vocab_size), _Chooser(sample, g)
    if sample.speculative == "ngram":
        drafter = NgramDrafter()
    else:
        drafter = ModelDrafter(engine.draft, engine.device, engine.dtype)
    cache, s = None, 0  # the cache holds ctx[s : s + cache.pos]
    while True:
        n = len(ctx)
        if cache is None or n > s + bs:  # start, or the window is full: prefill the last half, as the engine does
            if cache is not None:
                s = n - max(1, bs // 2)
            cache, raw = engine.prefill([ctx[s:]])
            tok, _ = choose.one(adjust(raw, [], 0))
            emitted = [tok]
        else:  # ctx[-1] is not in the cache yet: feed it with the drafts
            room = min(sample.draft_tokens, s + bs - n, sample.max_new_tokens - len(out.tokens) - 1)
            drafts, q = drafter.propose(ctx, room, adjust, choose) if room > 0 else ([], None)
            raw = _forward(engine.model, cache, [ctx[-1], *drafts], engine.device)  # (len(drafts) + 1, V)
            j, tok = choose.verify(adjust(raw, drafts, 0), drafts, q)
            cache.rollback(len(drafts) - j)  # keep ctx[-1] and the accepted drafts
            stats.drafted += len(drafts)
            stats.accepted += j
            emitted = drafts[:j] + [tok]
        stats.forwards += 1
        for i, tok in enumerate(emitted):
            if tok in stop:
                out.finish_reason = "stop"
                return
            out.tokens.append(tok)
            ctx.append(tok)
            adjust.add(tok)
            stats.tokens += 1
            if want_lp:
                lp, top_ids, top_vals = S.top_logprobs(raw[i : i + 1], torch.tensor([tok]), sample.top_logprobs)
                out.logprobs.append(float(lp[0]))
                out.top_logprobs.append(list(zip(top_ids[0].tolist(), top_vals[0].tolist())))
            yield tok
            if should_stop is not None and should_stop(index, out.tokens):
                out.finish_reason = "stop"
                return
            if len(out.tokens) >= sample.max_new_tokens:
                out.finish_reason = "length"
                return
