"""`/metrics` in Prometheus' text format, with `prometheus-client` (one registry per app, so apps do not mix).

pocketgpt_requests_total{route, status}         every HTTP request, by route template and status code
pocketgpt_prompt_tokens_total                   prompt tokens of completion and chat requests
pocketgpt_completion_tokens_total               tokens generated
pocketgpt_time_to_first_token_seconds           histogram: request submitted -> its first token
pocketgpt_inter_token_latency_seconds           histogram: gaps between one sequence's tokens
pocketgpt_queue_depth, pocketgpt_running_rows   sequences waiting / decoding, read from the scheduler at scrape
pocketgpt_kv_cache_bytes                        bytes held by the batch's KV cache at scrape
pocketgpt_decode_steps_total                    batched decode forwards
pocketgpt_speculative_{drafted,accepted}_tokens_total

pocketgpt_prefix_cache_{hits,misses,reused_tokens}_total   prefix caching (generate/prefix_cache.py)
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _SchedulerCollector:
    """Gauges read from the scheduler when Prometheus scrapes, so they are never stale."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def collect(self):
        st = self.scheduler.stats()
        yield GaugeMetricFamily("pocketgpt_queue_depth", "sequences waiting for a row", value=st["waiting"])
        yield GaugeMetricFamily("pocketgpt_running_rows", "sequences being decoded", value=st["running"])
        cache = self.scheduler._cache
        held = 0 if cache is None else cache.k.numel() * cache.k.element_size() * 2
        yield GaugeMetricFamily("pocketgpt_kv_cache_bytes", "bytes of the batch's KV cache", value=held)
        yield CounterMetricFamily("pocketgpt_decode_steps", "batched decode forwards", value=st["decode_calls"])
        for name, what in (
            ("hits", "prompts that reused a cached prefix"),
            ("misses", "prompts that found none"),
            ("reused_tokens", "prompt tokens not prefilled thanks to the cache"),
        ):
            if f"prefix_cache_{name}" in st:
                yield CounterMetricFamily(f"pocketgpt_prefix_cache_{name}", what, value=st[f"prefix_cache_{name}"])
        spec = self.scheduler.spec_stats
        yield CounterMetricFamily(
            "pocketgpt_speculative_drafted_tokens", "tokens drafted for speculative requests", value=spec.drafted
        )
        yield CounterMetricFamily(
            "pocketgpt_speculative_accepted_tokens", "drafted tokens the model accepted", value=spec.accepted
        )


class Metrics:
    def __init__(self, scheduler):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pocketgpt_requests", "HTTP requests", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("pocketgpt_prompt_tokens", "prompt tokens of generation requests", registry=r)
        self.completion_tokens = Counter("pocketgpt_completion_tokens", "tokens generated", registry=r)
        self.ttft = Histogram(
            "pocketgpt_time_to_first_token_seconds", "submit -> first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "pocketgpt_inter_token_latency_seconds",
            "gap between tokens of one sequence",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_SchedulerCollector(scheduler))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self) -> TokenTimer:
        return TokenTimer(self)


class TokenTimer:
    """Times one sequence's tokens as they arrive: the first against the submit, the rest against the previous."""

    def __init__(self, metrics: Metrics):
        self.metrics, self.start, self.last = metrics, time.perf_counter(), None

    def token(self) -> None:
        now = time.perf_counter()
        (self.metrics.ttft if self.last is None else self.metrics.itl).observe(now - (self.last or self.start))
        self.last = now
        self.metrics.completion_tokens.inc()
