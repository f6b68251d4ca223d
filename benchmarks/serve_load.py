"""Load test: `pocketgpt serve` under a bounded storm of valid, malformed and abandoned requests.

A real server (a small model with random weights, 4 layers x 128 wide, GPT-2's vocabulary when
../shared/data/gpt2 has it) runs in a subprocess on 127.0.0.1 only. --requests requests (default 2,000) are sent
by --concurrency concurrent httpx clients (default 32), stopping early at --time-limit seconds. The mix (fixed by
--seed): valid completions and chat, streaming and not, with short max_tokens (some with n, stop strings,
logprobs); malformed requests (bad JSON, wrong types, unknown model, prompt too long, negative max_tokens,
oversized body, bad n, unknown parameter, wrong method / route, invalid UTF-8); and clients that disconnect
mid-stream or before a non-streamed answer; chats that share one long system prompt (the prefix cache's case),
chats with a JSON-schema response_format (each 200 answer must parse and validate), and embeddings. Every answer
that is not 200 must be an OpenAI error object.

Reports: responses by kind and status, the 5xx count (target 0), answers with an unexpected status or shape,
latency p50 / p99 (send -> whole response read) per group, and the server's resident memory (VmRSS from
/proc/PID/status) after warm-up, midway and at the end. Exits 1 if any 5xx (or a dropped connection, or a dead
server) occurred.

    python benchmarks/serve_load.py [--requests 2000] [--concurrency 32] [--time-limit 600]
    python benchmarks/serve_load.py --quick          # smoke run: 200 requests at 16
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx
from common import header
from serve import GPT2_FILES, Server, make_checkpoint, make_tokenizer, percentile

NAME = "bench"
SYSTEM = (  # a long system prompt every chat-shared-prefix request starts with
    "You are a careful assistant for a small language model demo. Answer in one short sentence, name the tokens "
    "you read, say which earlier positions attention mixed, and never invent facts you were not given. "
) * 3
JSON_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 24}, "confidence": {"enum": ["low", "high"]}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
WORDS = "the model reads tokens and predicts the next one while attention mixes values from earlier positions".split()

# kind -> (weight, group, expected statuses)
KINDS = {
    "completion": (14, "valid", {200, 429}),
    "completion-stream": (14, "valid", {200, 429}),
    "chat": (12, "valid", {200, 429}),
    "chat-stream": (12, "valid", {200, 429}),
    "completion-n-stop-lp": (5, "valid", {200, 429}),
    "chat-shared-prefix": (8, "valid", {200, 429}),  # one long system prompt: the prefix cache's case
    "chat-json-schema": (5, "valid", {200, 429}),  # response_format json_schema: grammar-constrained decoding
    "embeddings": (2, "valid", {200}),
    "models": (3, "valid", {200}),
    "bad-json": (3, "malformed", {400}),
    "not-an-object": (2, "malformed", {400}),
    "invalid-utf8": (2, "malformed", {400}),
    "wrong-type": (4, "malformed", {400}),
    "unknown-model": (3, "malformed", {404}),
    "unknown-parameter": (2, "malformed", {400}),
    "prompt-too-long": (3, "malformed", {400}),
    "negative-max-tokens": (3, "malformed", {400}),
    "bad-n": (3, "malformed", {400}),
    "oversized-body": (1, "malformed", {413}),
    "wrong-method-or-route": (2, "malformed", {404, 405}),
    "disconnect-mid-stream": (7, "disconnect", {200, 429}),
    "disconnect-before-answer": (3, "disconnect", {None, 200, 429}),
}


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no response (the client left first)
    latency: float
    problem: str | None = None  # an unexpected status / shape / transport error, with a short detail


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build(kind: str, rng: random.Random) -> tuple[str, str, dict | bytes | None]:
    """(method, path, JSON body or raw bytes) of one request of this kind."""
    mt = rng.randint(1, 16)
    temp = rng.choice([0, 0.7, 1.0])
    if kind in ("completion", "completion-stream"):
        return (
            "POST",
            "/v1/completions",
            {
                "model": NAME,
                "prompt": words(rng, rng.randint(1, 30)),
                "max_tokens": mt,
                "temperature": temp,
                "stream": kind.endswith("stream"),
            },
        )
    if kind in ("chat", "chat-stream"):
        msgs = [{"role": "user", "content": words(rng, rng.randint(1, 20))}]
        if rng.random() < 0.3:
            msgs.insert(0, {"role": "system", "content": "Be brief."})
        body = {
            "model": NAME,
            "messages": msgs,
            "max_tokens": mt,
            "temperature": temp,
            "stream": kind.endswith("stream"),
        }
        if body["stream"] and rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        return "POST", "/v1/chat/completions", body
    if kind == "completion-n-stop-lp":
        return (
            "POST",
            "/v1/completions",
            {
                "model": NAME,
                "prompt": words(rng, 8),
                "max_tokens": mt,
                "n": rng.randint(2, 3),
                "stop": [" the", "\n"],
                "logprobs": 2,
                "seed": rng.randint(0, 99),
                "stream": rng.random() < 0.5,
            },
        )
    if kind == "chat-shared-prefix":
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": words(rng, rng.randint(2, 12))}]
        return "POST", "/v1/chat/completions", {"model": NAME, "messages": msgs, "max_tokens": mt, "temperature": temp}
    if kind == "chat-json-schema":
        fmt = {"type": "json_schema", "json_schema": {"name": "reply", "schema": JSON_SCHEMA}}
        msgs = [{"role": "user", "content": words(rng, 6)}]
        body = {"model": NAME, "messages": msgs, "max_tokens": 80, "temperature": temp, "response_format": fmt}
        body["stream"] = rng.random() < 0.5
        return "POST", "/v1/chat/completions", body
    if kind == "embeddings":
        return "POST", "/v1/embeddings", {"model": NAME, "input": [words(rng, 8), words(rng, 3)]}
    if kind == "models":
        return "GET", "/v1/models", None
    if kind == "bad-json":
        return (
            "POST",
            "/v1/completions",
            rng.choice([b'{"model": "bench", "prompt": ', b"{'prompt': 'x'}", b"", b"nul"]),
        )
    if kind == "not-an-object":
        return (
            "POST",
            rng.choice(["/v1/completions", "/v1/chat/completions"]),
            json.dumps(rng.choice([[1, 2], "hi", 3, None])).encode(),
        )
    if kind == "invalid-utf8":
        return "POST", "/v1/completions", b'{"prompt": "\xff\xfe\x80"}'
    if kind == "wrong-type":
        return (
            "POST",
            "/v1/completions",
            rng.choice(
                [
                    {"prompt": 123},
                    {"prompt": "hi", "max_tokens": "ten"},
                    {"prompt": "hi", "temperature": "hot"},
                    {"prompt": "hi", "stream": "yes"},
                    {"prompt": [1.5, 2]},
                    {"prompt": "hi", "stop": 7},
                    {"prompt": "hi", "logit_bias": {"x": 1}},
                    {"prompt": "hi", "max_tokens": 1e30},
                    {"prompt": "hi", "temperature": 99},
                    {"messages": "hi"},
                    {"prompt": "hi", "seed": "x"},
                ]
            ),
        )
    if kind == "unknown-model":
        return "POST", "/v1/completions", {"model": "gpt-4o", "prompt": "hi", "max_tokens": 4}
    if kind == "unknown-parameter":
        return (
            "POST",
            "/v1/chat/completions",
            {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "functions_v9": True},
        )
    if kind == "prompt-too-long":
        return "POST", "/v1/completions", {"model": NAME, "prompt": " hello" * 1500, "max_tokens": 4}
    if kind == "negative-max-tokens":
        return "POST", "/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": -rng.randint(1, 100)}
    if kind == "bad-n":
        return (
            "POST",
            "/v1/completions",
            {"model": NAME, "prompt": "hi", "max_tokens": 2, "n": rng.choice([0, -1, 17, 10**6, "2", 1.5])},
        )
    if kind == "oversized-body":
        return "POST", "/v1/completions", {"model": NAME, "prompt": "x" * ((1 << 20) + 100), "max_tokens": 1}
    if kind == "wrong-method-or-route":
        return rng.choice(
            [
                ("GET", "/v1/completions", None),
                ("POST", "/v1/embedding", {"input": "hi"}),
                ("DELETE", "/v1/models", None),
            ]
        )
    if kind == "disconnect-mid-stream":
        chat = rng.random() < 0.5
        body = {"model": NAME, "max_tokens": 400, "stream": True, "temperature": 1.0}
        body.update({"messages": [{"role": "user", "content": "tell me more"}]} if chat else {"prompt": words(rng, 5)})
        return "POST", "/v1/chat/completions" if chat else "/v1/completions", body
    if kind == "disconnect-before-answer":
        return "POST", "/v1/completions", {"model": NAME, "prompt": words(rng, 5), "max_tokens": 400}
    raise ValueError(kind)


def json_problem(obj: dict) -> str | None:
    """A JSON-schema chat answer that ended ("stop") must parse and validate; None when it does."""
    for ch in obj["choices"]:
        if ch["finish_reason"] != "stop":
            continue  # cut by max_tokens: a prefix of valid JSON
        try:
            a = json.loads(ch["message"]["content"])
            ok = set(a) == {"answer", "confidence"} and len(a["answer"]) <= 24 and a["confidence"] in ("low", "high")
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            return f"JSON-schema answer does not validate: {ch['message']['content'][:120]!r}"
    return None


def openai_error_shape(content: bytes) -> bool:
    try:
        e = json.loads(content)["error"]
        return isinstance(e["message"], str) and isinstance(e["type"], str) and "param" in e and "code" in e
    except (ValueError, KeyError, TypeError):
        return False


async def one(client: httpx.AsyncClient, kind: str, rng: random.Random) -> Outcome:
    method, path, body = build(kind, rng)
    if isinstance(body, bytes):
        kw = {"content": body, "headers": {"content-type": "application/json"}}
    else:
        kw = {} if body is None else {"json": body}
    streamed = isinstance(body, dict) and body.get("stream") is True
    expected = KINDS[kind][2] | {429}  # a server with too many requests in flight may refuse any
    t0 = time.perf_counter()
    try:
        if kind == "disconnect-before-answer":
            try:
                r = await asyncio.wait_for(client.request(method, path, **kw), timeout=rng.uniform(0.02, 0.3))
            except asyncio.TimeoutError:
                return Outcome(kind, None, time.perf_counter() - t0)
            status, content = r.status_code, r.content  # the answer came first: fine too
            return Outcome(
                kind,
                status,
                time.perf_counter() - t0,
                None if status in expected else f"HTTP {status}: {content[:120]!r}",
            )
        async with client.stream(method, path, **kw) as r:
            status = r.status_code
            if kind == "disconnect-mid-stream" and status == 200:
                seen, leave_after = 0, rng.randint(1, 6)
                async for line in r.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= leave_after:
                        break  # leaving the block closes the connection
                return Outcome(kind, status, time.perf_counter() - t0)
            content = await r.aread()
    except httpx.HTTPError as e:
        return Outcome(kind, None, time.perf_counter() - t0, f"transport: {e.__class__.__name__}: {e}"[:160])
    latency = time.perf_counter() - t0
    problem = None
    if status not in expected:
        problem = f"HTTP {status} (expected {sorted(expected)}): {content[:160]!r}"
    elif status != 200 and not openai_error_shape(content):
        problem = f"HTTP {status} body is not an OpenAI error object: {content[:160]!r}"
    elif status == 200 and streamed:
        if not content.rstrip().endswith(b"data: [DONE]") or b'"error"' in content:
            problem = f"stream did not end with [DONE]: {content[-160:]!r}"
    elif status == 200 and method == "POST":
        try:
            obj = json.loads(content)
            obj["data" if kind == "embeddings" else "choices"]
        except (ValueError, KeyError, TypeError):
            problem = f"HTTP 200 without choices / data: {content[:160]!r}"
        else:
            if kind == "chat-json-schema":
                problem = json_problem(obj)
    return Outcome(kind, status, latency, problem)


async def storm(url: str, n: int, concurrency: int, deadline: float, seed: int, on_progress) -> list[Outcome]:
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    plan = random.Random(seed).choices(names, weights, k=n)
    out: list[Outcome] = []
    nxt = 0
    # idle connections expire on the client before uvicorn's 5 s keep-alive timeout closes them under a request
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60.0), limits=limits) as client:

        async def worker() -> None:
            nonlocal nxt
            while nxt < n and time.monotonic() < deadline:
                i, nxt = nxt, nxt + 1
                out.append(await one(client, plan[i], random.Random(seed * 1_000_003 + i)))
                on_progress(len(out))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=600.0, help="stop sending new requests after this many s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=200, help="requests of the same mix before the first RSS reading")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--server-args", default="", help="extra `pocketgpt serve` flags")
    ap.add_argument("--gpt2-files", type=Path, default=GPT2_FILES, help="folder with encoder.json + vocab.bpe")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 requests at concurrency 16")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.warmup = 200, 16, 40
    header(
        f"serving load test: {args.requests} requests at concurrency {args.concurrency} "
        f"(time limit {args.time_limit:.0f} s), small model, loopback"
    )
    import torch

    from pocketgpt.device import pick_dtype

    load = os.getloadavg()
    dtype = str(pick_dtype(args.dtype, torch.device("cpu"))).removeprefix("torch.")
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | server --dtype {args.dtype} ({dtype}) "
        f"{args.server_args} | random weights | httpx {httpx.__version__} | seed {args.seed}"
    )
    root = Path(tempfile.mkdtemp(prefix="pocketgpt-bench-load-"))
    failed = False
    try:
        tok, source = make_tokenizer(args.gpt2_files)
        print(f"vocabulary: {tok.n_vocab} tokens from {source}")
        ckpt = make_checkpoint("small", root, tok)
        with Server(ckpt, dtype=args.dtype, extra=tuple(args.server_args.split()), log_dir=root) as srv:
            rss = {"idle, before any request": srv.rss_kib()}
            asyncio.run(
                storm(srv.url, args.warmup, args.concurrency, time.monotonic() + 300, args.seed + 1, lambda k: None)
            )
            rss[f"start (after {args.warmup} warm-up requests)"] = start = srv.rss_kib()
            every = max(1, args.requests // 10)

            def progress(done: int) -> None:
                if done % every == 0 and done < args.requests:
                    rss[f"after {done}" + (" (midway)" if done == args.requests // 2 else "")] = srv.rss_kib()

            t0 = time.perf_counter()
            outcomes = asyncio.run(
                storm(srv.url, args.requests, args.concurrency, time.monotonic() + args.time_limit, args.seed, progress)
            )
            wall = time.perf_counter() - t0
            rss["end"] = srv.rss_kib()
            alive = srv.proc.poll() is None
            health, settle = {}, time.monotonic() + 30
            while alive:  # abandoned rows must leave the scheduler
                health = srv.health()
                if health["running"] == 0 and health["waiting"] == 0 or time.monotonic() > settle:
                    break
                time.sleep(0.2)
            rss["end + settled"] = srv.rss_kib()
            log = srv.log_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(
        f"{len(outcomes)} requests in {wall:.1f} s ({len(outcomes) / wall:.1f} requests/s)"
        + ("" if len(outcomes) == args.requests else " -- stopped by the time limit")
    )
    by_status = collections.Counter(o.status for o in outcomes)
    five = sum(c for s, c in by_status.items() if s is not None and s >= 500)
    order = sorted(by_status.items(), key=lambda x: (x[0] is None, x[0] or 0))
    print(
        "responses by status: " + ", ".join(f"{'no response (client left)' if s is None else s}: {c}" for s, c in order)
    )
    print(f"5xx: {five}\n")
    print("| kind | group | sent | statuses | p50 ms | p99 ms | problems |")
    print("|---|---|---|---|---|---|---|")
    for kind, (_, group, _) in KINDS.items():
        os_ = [o for o in outcomes if o.kind == kind]
        if not os_:
            continue
        st = collections.Counter(o.status for o in os_)
        lat = [o.latency for o in os_]
        print(
            f"| {kind} | {group} | {len(os_)} | "
            + ", ".join(f"{'left' if s is None else s}: {c}" for s, c in sorted(st.items(), key=lambda x: x[0] or 0))
            + f" | {percentile(lat, 50) * 1e3:.0f} | {percentile(lat, 99) * 1e3:.0f} | "
            f"{sum(o.problem is not None for o in os_)} |"
        )
    print("\n| group | requests | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for group in ("valid", "malformed", "disconnect", "all"):
        lat = [o.latency for o in outcomes if group == "all" or KINDS[o.kind][1] == group]
        if lat:
            print(f"| {group} | {len(lat)} | {percentile(lat, 50) * 1e3:.0f} | {percentile(lat, 99) * 1e3:.0f} |")
    print("\n| server RSS (VmRSS) | MiB |")
    print("|---|---|")
    for k, v in rss.items():
        print(f"| {k} | {v / 1024:.1f} |")
    growth = rss["end"] - start
    mid = next((v for k, v in rss.items() if k.endswith("(midway)")), rss["end"])
    print(
        f"RSS growth start -> end: {growth / 1024:+.1f} MiB ({100 * growth / start:+.1f}%); "
        f"midway -> end: {(rss['end'] - mid) / 1024:+.1f} MiB ({100 * (rss['end'] - mid) / mid:+.1f}%)"
    )
    problems = [o for o in outcomes if o.problem]
    print(f"\nanswers with an unexpected status or shape, or dropped connections: {len(problems)}")
    for o in problems[:10]:
        print(f"  {o.kind}: {o.problem}")
    print(
        f"server after the storm: {'alive' if alive else 'DEAD'}; scheduler "
        f"running={health.get('running')} waiting={health.get('waiting')} finished={health.get('finished')}"
    )
    if "prefix_cache_hits" in health:
        print(
            f"prefix cache: {health['prefix_cache_hits']} hits, {health['prefix_cache_misses']} misses, "
            f"{health['prefix_cache_reused_tokens']:,} prompt tokens not prefilled, {health['prefix_cache_entries']} "
            f"entries in {health['prefix_cache_bytes'] / 2**20:.1f} MiB"
        )
    json_ok = [o for o in outcomes if o.kind == "chat-json-schema" and o.status == 200]
    print(f"json-schema answers: {len(json_ok)} with status 200, {sum(o.problem is not None for o in json_ok)} invalid")
    bad_lines = [ln for ln in log.splitlines() if "ERROR" in ln or "WARNING" in ln or "Traceback" in ln]
    print(
        f"server log: {len(bad_lines)} ERROR / WARNING / Traceback lines"
        + "".join(f"\n  {ln[:200]}" for ln in bad_lines[:8])
    )
    if "Traceback" in log:
        print("the server log holds a traceback:\n" + log[log.index("Traceback") :][:2000])
    dropped = sum(o.problem is not None and o.problem.startswith("transport") for o in problems)
    failed = five > 0 or not alive or dropped > 0
    print(
        f"RESULT: {'FAIL' if failed else 'PASS'} (5xx: {five}, dropped connections: {dropped}, "
        f"server {'alive' if alive else 'DEAD'})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
