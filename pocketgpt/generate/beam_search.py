"""Beam search with Hugging Face's semantics, so the same weights give the same beams as `generate(num_beams=W)`.

Each step keeps the 2W best continuations (more with several stop tokens) of the W running beams by summed
log-probability. A continuation that ends in a stop token, or reaches max_new_tokens, is a finished
hypothesis scored sum_logprob / generated_length ** length_penalty; the best W hypotheses are kept. The search
ends when no running beam can beat the worst finished one (the heuristic of HF's `early_stopping=False`), when W
hypotheses are finished and early_stopping is True, or at max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate.completion import Completion, crop_prompt

NEG = -1.0e9


@torch.inference_mode()
def beam_search(engine, prompt: list[int], sample: SampleConfig, stop_ids: Iterable[int] = ()) -> list[Completion]:
    W, lp, early = sample.num_beams, sample.length_penalty, sample.early_stopping
    max_new = sample.max_new_tokens
    if max_new == 0:
        return [Completion([], "length", score=0.0) for _ in range(sample.num_samples)]
    stops = sorted(set(stop_ids))
    stop_t = torch.tensor(stops, dtype=torch.long)
    K = max(2, 1 + len(stops)) * W
    context, _ = crop_prompt(list(prompt), engine.cfg.block_size)
    if len(context) + max_new > engine.cfg.block_size:
        raise ValueError(
            f"beam search needs prompt + max_new_tokens <= context ({engine.cfg.block_size}); "
            f"got {len(context)} + {max_new}"
        )
    cache, logits = engine.prefill([context])
    cache, logits = cache.expand(W), logits.expand(W, -1)
    V = logits.shape[-1]
    running: list[list[int]] = [[] for _ in range(W)]
    run_scores = torch.full((W,), NEG)
    run_scores[0] = 0.0  # only beam 0 is live at the start
    fin: list[tuple[list[int], str]] = [([], "length")] * W
    fin_scores = torch.full((W,), NEG)
    fin_done = torch.zeros(W, dtype=torch.bool)
    improvable = True
    for step in range(max_new):
        # 1) the K best continuations of all beams by summed log-probability
        acc = (logits.float().log_softmax(-1) + run_scores[:, None]).reshape(-1)  # (W*V,)
        top_lp, top_idx = acc.topk(K)
        src, tok = top_idx // V, top_idx % V
        is_stop = torch.isin(tok, stop_t) if stops else torch.zeros(K, dtype=torch.bool)
        hits = is_stop | (step + 1 == max_new)
        # 2) finished hypotheses: the top-W candidates that hit a stop, normalised by their length
        cand = top_lp / ((step + 1) ** lp)
        if bool(fin_done.all()) and early is True:
            cand = cand + NEG
        if not improvable:
            cand = cand + NEG
        cand = cand + (~(hits & (torch.arange(K) < W))).float() * NEG
        merged = torch.cat([fin_scores, cand])
        best = merged.topk(W).indices
        new_fin, new_done = [], []
        for i in best.tolist():
            if i < W:
                new_fin.append(fin[i])
                new_done.append(bool(fin_done[i]))
            else:
                c = i - W
                seq = running[int(src[c])] + ([] if bool(is_stop[c]) else [int(tok[c])])
                new_fin.append((seq, "stop" if bool(is_stop[c]) else "length"))
                new_done.append(bool(hits[c]) and c < W)  # as HF: only a top-W hit counts as finished
        fin, fin_scores, fin_done = new_fin, merged[best], torch.tensor(new_done)
        # 3) the W best continuations that did not stop keep running
        run_lp = top_lp + hits.float() * NEG
        nxt = run_lp.topk(W).indices
        running = [running[int(src[i])] + [int(tok[i])] for i in nxt]
        run_scores = run_lp[nxt]
        # 4) can a running beam still beat the worst finished hypothesis?
        best_len = max_new if early == "never" and lp > 0 else step + 1
        worst = fin_scores.min() if bool(fin_done.all()) else torch.tensor(NEG)
        improvable = improvable and bool(run_scores[0] / best_len**lp > worst)
        if not (improvable and not (bool(fin_done.all()) and early is True) and not bool(hits.all())):
            break
        cache = cache.select(src[nxt])
        logits = engine.decode(cache, tok[nxt], None)
    return [
        Completion(list(seq), reason, score=float(score))
        for (seq, reason), score in list(zip(fin, fin_scores.tolist()))[: sample.num_samples]
    ]
