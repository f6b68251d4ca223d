"""The scheduler: rows share decode forwards, each row gives what it gives alone, rows join and leave mid-flight."""

from __future__ import annotations

import asyncio

import pytest
import torch

from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.generate.engine import Engine
from pocketgpt.generate.scheduler import QueueFull, Scheduler, SchedulerClosed
from pocketgpt.model import GPT

GREEDY = SampleConfig(max_new_tokens=12, temperature=0)


@pytest.fixture
def engine(tiny_cfg):
    torch.manual_seed(0)
    return Engine(GPT(tiny_cfg))


def alone(engine, prompt, sample, stop_ids=()):
    return engine.generate([prompt], sample, stop_ids=stop_ids)[0]


def run(sched: Scheduler, limit: int = 10_000) -> None:
    """Step until idle."""
    for _ in range(limit):
        if not sched.step():
            return
    raise AssertionError("the scheduler never went idle")


def test_two_requests_share_every_decode_forward_and_equal_their_alone_results(engine):
    sched = Scheduler(engine, max_batch=4)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8]]  # different lengths: padding + per-row positions
    handles = [sched.submit(p, GREEDY) for p in prompts]
    run(sched)
    for p, h in zip(prompts, handles):
        assert h.result().tokens == alone(engine, p, GREEDY)[0].tokens
        assert h.finish_reason == "length" and h.completion_tokens == 12
    assert sched.prefill_calls == 1  # admitted together: one prefill for both
    assert list(sched.decode_batch_sizes) == [2] * 11  # one forward per step serves both rows
    assert sched.decode_calls == 11


def test_a_request_joining_mid_flight_is_batched_and_unchanged(engine):
    sched = Scheduler(engine, max_batch=4)
    long = SampleConfig(max_new_tokens=20, temperature=0)
    a = sched.submit([5, 6, 7], long)
    for _ in range(6):
        sched.step()
    b = sched.submit(list(range(10, 40)), GREEDY)  # longer prompt than a's cache: a's rows re-align
    run(sched)
    assert a.result().tokens == alone(engine, [5, 6, 7], long)[0].tokens
    assert b.result().tokens == alone(engine, list(range(10, 40)), GREEDY)[0].tokens
    assert 2 in sched.decode_batch_sizes and sched.decode_batch_sizes[0] == 1


def test_generation_past_the_context_slides_like_the_engine(engine):
    sched = Scheduler(engine, max_batch=4)
    far = SampleConfig(max_new_tokens=150, temperature=0)  # block_size 64: the window slides twice or more
    prompts = [[1, 2], list(range(3, 50))]
    handles = [sched.submit(p, far) for p in prompts]
    for _ in range(40):
        sched.step()
    late = sched.submit([7, 7, 7], far)
    run(sched)
    for p, h in zip(prompts + [[7, 7, 7]], handles + [late]):
        assert h.result().tokens == alone(engine, p, far)[0].tokens


def test_the_batch_cache_grows_with_the_text_not_the_context(tiny_cfg):
    torch.manual_seed(1)
    engine = Engine(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=256, vocab_size=tiny_cfg.vocab_size)))
    sched = Scheduler(engine, max_batch=2)
    far = SampleConfig(max_new_tokens=300, temperature=0)
    a = sched.submit([1, 2, 3], far)
    sizes = set()
    while sched.step():
        if sched._cache is not None:
            sizes.add(sched._cache.max_len)
            if len(sizes) == 2 and sched.stats()["running"] == 1:
                b = sched.submit(list(range(5, 40)), far)  # joins a grown, partly filled cache
    assert min(sizes) < 256 and len(sizes) >= 3  # repacked with more room as the text grew
    assert a.result().tokens == alone(engine, [1, 2, 3], far)[0].tokens
    assert b.result().tokens == alone(engine, list(range(5, 40)), far)[0].tokens


def test_seeded_samples_with_their_own_settings_repeat_their_alone_results(engine):
    sched = Scheduler(engine, max_batch=8)
    configs = [
        SampleConfig(max_new_tokens=15, temperature=0.9, top_k=20, seed=3),
        SampleConfig(max_new_tokens=9, temperature=1.2, top_p=0.8, seed=4, frequency_penalty=1.0),
        SampleConfig(
            max_new_tokens=12,
            temperature=0.7,
            repetition_penalty=1.3,
            seed=5,
            logit_bias={3: 5.0},
            presence_penalty=0.5,
            logprobs=True,
            top_logprobs=2,
        ),
    ]
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    handles = [sched.submit(p, s) for p, s in zip(prompts, configs)]
    n2 = sched.submit_all([2, 4, 6], SampleConfig(max_new_tokens=10, temperature=1.0, seed=11, num_samples=2))
    run(sched)
    for p, s, h in zip(prompts, configs, handles):
        got, want = h.result(), alone(engine, p, s)[0]
        assert got.tokens == want.tokens
        if s.logprobs:
            assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
            assert [[i for i, _ in t] for t in got.top_logprobs] == [[i for i, _ in t] for t in want.top_logprobs]
    want = engine.generate([[2, 4, 6]], SampleConfig(max_new_tokens=10, temperature=1.0, seed=11, num_samples=2))[0]
    assert [h.result().tokens for h in n2] == [c.tokens for c in want]


def test_stop_ids_and_should_stop_end_a_row(engine):
    sched = Scheduler(engine, max_batch=2)
    free = alone(engine, [1, 2, 3], GREEDY)[0].tokens
    h = sched.submit([1, 2, 3], GREEDY, stop_ids=[free[4]])
    g = sched.submit([1, 2, 3], GREEDY, should_stop=lambda j, toks: len(toks) == 3)
    run(sched)
    assert h.result().tokens == free[: free.index(free[4])] and h.finish_reason == "stop"
    assert g.result().tokens == free[:3] and g.finish_reason == "stop"


def test_cancel_frees_the_row_for_a_waiting_request(engine):
    sched = Scheduler(engine, max_batch=1, max_queue=2)
    long = SampleConfig(max_new_tokens=500, temperature=0)
    a = sched.submit([1, 2], long)
    b = sched.submit([3, 4], GREEDY)
    for _ in range(3):
        sched.step()
    assert sched.stats()["running"] == 1 and sched.stats()["waiting"] == 1
    a.cancel()
    run(sched)
    assert a.finish_reason == "cancelled" and len(a.result().tokens) < 500
    assert b.result().tokens == alone(engine, [3, 4], GREEDY)[0].tokens
    assert set(sched.decode_batch_sizes) == {1}


def test_a_full_queue_refuses_and_a_cancelled_waiter_leaves_it(engine):
    sched = Scheduler(engine, max_batch=1, max_queue=2)
    waiting = [sched.submit([1], GREEDY), sched.submit([2], GREEDY)]
    with pytest.raises(QueueFull):
        sched.submit([3], GREEDY)
    with pytest.raises(QueueFull):  # n sequences are queued all or none
        sched.submit_all([3], SampleConfig(max_new_tokens=2, num_samples=3))
    waiting[0].cancel()
    assert waiting[0].finish_reason == "cancelled"
    sched.submit([3], GREEDY)
    sched.close()
    assert waiting[1].finish_reason == "cancelled"
    with pytest.raises(SchedulerClosed):
        sched.submit([4], GREEDY)


def test_the_thread_serves_asyncio_consumers(engine):
    sched = Scheduler(engine, max_batch=4).start()

    async def main():
        loop = asyncio.get_running_loop()
        hs = [sched.submit(p, GREEDY, loop=loop) for p in ([1, 2, 3], [4, 5])]

        async def collect(h):
            return [t.id async for t in h]

        return await asyncio.gather(*(collect(h) for h in hs))

    try:
        got = asyncio.run(main())
    finally:
        sched.close()
    assert got == [alone(engine, p, GREEDY)[0].tokens for p in ([1, 2, 3], [4, 5])]


def test_zero_max_tokens_and_bad_prompts(engine):
    sched = Scheduler(engine)
    h = sched.submit([1, 2], SampleConfig(max_new_tokens=0))
    run(sched)
    assert h.result().tokens == [] and h.finish_reason == "length"
    for bad in ([], [10_000]):
        with pytest.raises(ValueError):
            sched.submit(bad, GREEDY)


def test_rows_sharing_settings_are_sampled_together_and_each_repeats_its_alone_result(engine):
    sched = Scheduler(engine, max_batch=8)
    same = [SampleConfig(max_new_tokens=14, temperature=1.0, seed=20 + i) for i in range(4)]  # one vectorised group
    other = [
        SampleConfig(max_new_tokens=10, temperature=0),
        SampleConfig(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=9, logit_bias={5: 4.0, 6: -100.0}),
    ]
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8], [9, 10], [11, 12], [13]]
    handles = [sched.submit(p, s) for p, s in zip(prompts, same + other)]
    run(sched)
    for p, s, h in zip(prompts, same + other, handles):
        assert h.result().tokens == alone(engine, p, s)[0].tokens
    assert max(sched.decode_batch_sizes) == 6


def test_the_fast_draws_equal_torch_multinomial_in_the_scheduler(engine, monkeypatch):
    from pocketgpt.generate import sampling as S

    configs = [
        SampleConfig(max_new_tokens=20, temperature=t, seed=s, top_k=k)
        for t, s, k in [(1.0, 1, 0), (1.0, 2, 0), (0.7, 3, 50), (1.0, 4, 0)]
    ]

    def tokens():
        sched = Scheduler(engine, max_batch=4)
        hs = [sched.submit([i + 1, i + 2], c) for i, c in enumerate(configs)]
        run(sched)
        return [h.result().tokens for h in hs]

    fast = tokens()
    monkeypatch.setattr(S, "_FAST", False)
    assert tokens() == fast


def test_bucketed_prefills_leave_every_row_unchanged(engine):
    engine.bucket_prefill = True  # what a CPU bf16 engine does; checked exactly here in fp32
    sched = Scheduler(engine, max_batch=4)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8], list(range(10, 31))]
    handles = [sched.submit(p, GREEDY) for p in prompts[:2]]
    for _ in range(3):
        sched.step()
    handles.append(sched.submit(prompts[2], GREEDY))
    run(sched)
    engine.bucket_prefill = False
    for p, h in zip(prompts, handles):
        assert h.result().tokens == alone(engine, p, GREEDY)[0].tokens
