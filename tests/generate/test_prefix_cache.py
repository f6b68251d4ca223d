"""Prefix caching in the scheduler: a prompt that starts like an earlier one prefills only the rest, and its
tokens are the same as without the cache (greedy and seeded sampling), alone or inside a batch; memory is bounded."""

from __future__ import annotations

import torch

from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.generate.engine import Engine
from pocketgpt.generate.prefix_cache import PrefixCache
from pocketgpt.generate.scheduler import Scheduler
from pocketgpt.model import GPT


def engine() -> Engine:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=97, pos_encoding="rope"))
    return Engine(model, kernels="linear")


def run(sched: Scheduler, prompts, sample) -> list[list[int]]:
    handles = [sched.submit(p, sample) for p in prompts]
    while any(h.finish_reason is None for h in handles):
        sched.step()
    return [h.result().tokens for h in handles]


SYSTEM = [(7 * i + 3) % 97 for i in range(40)]  # a shared "system prompt"
PROMPTS = [SYSTEM + [5, 6, 7], SYSTEM + [50, 60], SYSTEM + [5, 6, 7, 8, 9, 10, 11], [1, 2, 3] + SYSTEM]


def test_cache_hits_give_the_same_tokens():
    eng = engine()
    greedy = SampleConfig(max_new_tokens=20, temperature=0)
    sampled = SampleConfig(max_new_tokens=20, temperature=1.0, seed=3)
    plain = Scheduler(eng, max_batch=4)
    want_g = [run(plain, [p], greedy)[0] for p in PROMPTS]  # alone, no cache
    want_s = [run(plain, [p], sampled)[0] for p in PROMPTS]
    cached = Scheduler(eng, max_batch=4, prefix_cache_mb=16)
    assert run(cached, PROMPTS[:1], greedy) == want_g[:1]  # a miss: stores the prompt
    assert cached.stats()["prefix_cache_misses"] == 1
    assert [run(cached, [p], greedy)[0] for p in PROMPTS[1:]] == want_g[1:]  # hits (not the last: other start)
    st = cached.stats()
    assert st["prefix_cache_hits"] == 2 and st["prefix_cache_reused_tokens"] >= 2 * len(SYSTEM)
    assert run(cached, PROMPTS, sampled) == want_s  # all in one batch, seeded, every one a hit now
    assert run(cached, PROMPTS, greedy) == want_g


def test_bounded_memory_and_lru_eviction():
    k = torch.zeros(2, 2, 10, 16)
    size = 2 * k.numel() * k.element_size()
    pc = PrefixCache(max_bytes=3 * size, min_tokens=2)
    for i in range(5):
        pc.store([i] * 10, k, k)
    assert len(pc) == 3 and pc.bytes == 3 * size  # the two oldest went
    assert pc.lookup([0] * 10 + [1]) is None  # evicted
    hit = pc.lookup([4] * 10 + [1])
    assert hit is not None and hit.tokens == 10 and hit.k.shape == (2, 2, 10, 16)
    assert pc.lookup([4] * 10).tokens == 9  # never the whole prompt: its last token must run for the logits
    assert pc.lookup([9, 9, 9]) is None and pc.misses == 2 and pc.hits == 2
