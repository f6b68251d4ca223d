"""Serving throughput: aggregate tokens/s of `pocketgpt serve` at 1, 4, 8 and 16 concurrent streaming clients.

A real server (`python -m pocketgpt.cli.main serve CKPT`) runs in a subprocess on 127.0.0.1 (loopback only) with
its default limits (max batch 8: at 16 streams half the requests wait in the queue), and real HTTP clients
(httpx, async, in this process) stream POST /v1/completions with stream=true. Every request asks for the same
--max-tokens with end-of-text banned through the OpenAI parameter logit_bias {eot: -100} (the only stop id of
/v1/completions without `stop` strings), so every stream produces exactly max_tokens tokens; sampling is the
API's default (temperature 1, top_p 1) unless --temperature says otherwise.

Models have RANDOM weights (speed does not depend on the values): "small" = 4 layers x 128 wide, "gpt2" = the
GPT-2 124M shape (12 x 768); both with GPT-2's vocabulary (50,257 + pocketgpt's chat specials) read from
../shared/data/gpt2 when present, else a byte-level BPE this script trains (its size is printed).

For each model and stream count, each client sends --rounds requests one after another; aggregate tokens/s =
all tokens / wall time of the whole level. TTFT = request sent -> first text chunk; ITL = gaps between text
chunks of one stream (pooled over streams); p50/p90/p99. The ratio is against the 1-stream aggregate of the same
model in the same run. The server's own counters (/health) give the decode forwards and their mean batch.

    python benchmarks/serve.py [--models small,gpt2] [--streams 1,4,8,16] [--max-tokens 128] [--dtype auto]
    python benchmarks/serve.py --quick          # smoke run: small model, streams 1,4, 16 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx
import torch
from common import header

ROOT = Path(__file__).resolve().parents[1]
GPT2_FILES = ROOT.parent / "shared" / "data" / "gpt2"
SHAPES = {"small": dict(n_layer=4, n_head=4, n_embd=128), "gpt2": dict(n_layer=12, n_head=12, n_embd=768)}
LABELS = {"small": "small 4x128", "gpt2": "GPT-2 124M shape"}
PROMPT = (
    "Serving many users at once on a small machine means batching their requests, so that every decode "
    "step reads the weights once for all of them. Client {i} asks:"
)


# --- checkpoints and servers (serve_load.py uses these too) -----------------------------------------------------
def make_tokenizer(gpt2_files: Path = GPT2_FILES):
    """GPT-2's vocabulary (+ chat specials) when `gpt2_files` has it, else a BPE trained here; (tok, source)."""
    from pocketgpt.tokenizer import Tokenizer

    if (gpt2_files / "vocab.bpe").is_file() and (gpt2_files / "encoder.json").is_file():
        return Tokenizer.from_gpt2_files(gpt2_files).with_chat_specials(), f"GPT-2's files ({gpt2_files})"
    import random

    rng = random.Random(0)  # made-up words: enough distinct pairs for 8,192 tokens
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou", "ai")]
    text = " ".join("".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(300_000))
    tok = Tokenizer.train([text], vocab_size=8192)
    return tok, f"a byte-level BPE of 8,192 tokens trained by this script (no GPT-2 files in {gpt2_files})"


def make_checkpoint(shape: str, root: Path, tok) -> Path:
    """A checkpoint of `shape` with random weights (seed 0) and `tok`, chat-capable, under root/shape."""
    from pocketgpt.checkpoint import save_checkpoint
    from pocketgpt.config import ModelConfig
    from pocketgpt.model import GPT
    from pocketgpt.tokenizer.chat import TEMPLATE

    torch.manual_seed(0)
    cfg = ModelConfig(block_size=1024, vocab_size=tok.n_vocab, activation="gelu_tanh", **SHAPES[shape])
    model = GPT(cfg)
    save_checkpoint(root / shape, "ckpt-0000001", model, tok, step=0, extra={"chat_template": TEMPLATE})
    return root / shape


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`pocketgpt serve` in a subprocess on 127.0.0.1; its output goes to a log file printed on failure."""

    def __init__(
        self,
        ckpt: Path,
        *,
        dtype: str = "auto",
        name: str = "bench",
        extra: tuple[str, ...] = (),
        log_dir: Path | None = None,
    ):
        self.port, self.name = free_port(), name
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir or tempfile.gettempdir()) / f"pocketgpt-serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
        cmd = [
            sys.executable,
            "-m",
            "pocketgpt.cli.main",
            "serve",
            str(ckpt),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            dtype,
            "--device",
            "cpu",
            "--model-name",
            name,
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wait_until_healthy(self, 300)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS in /proc/PID/status), KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until_healthy(server, timeout: float) -> None:
    """Poll `server.url`/health until 200; RuntimeError with the log's tail if the process exits or time runs out.
    `server` has proc, url, log_path and stop() (this file's Server, llamacpp.py's LlamaServer)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited ({server.proc.returncode}):\n{server.log_path.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server did not come up:\n{server.log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


# --- the streaming clients --------------------------------------------------------------------------------------
@dataclass
class StreamResult:
    tokens: int = 0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    finish: str | None = None


async def one_stream(client: httpx.AsyncClient, body: dict) -> StreamResult:
    """POST one streaming completion; time the text chunks; the token count comes from the usage chunk."""
    res, last = StreamResult(), None
    t0 = time.perf_counter()
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if obj.get("usage"):
                res.tokens = obj["usage"]["completion_tokens"]
            for c in obj.get("choices", ()):
                if c.get("text"):
                    now = time.perf_counter()
                    if last is None:
                        res.ttft = now - t0
                    else:
                        res.gaps.append(now - last)
                    last = now
                if c.get("finish_reason"):
                    res.finish = c["finish_reason"]
    return res


def request_body(name: str, i: int, max_tokens: int, eot: int, temperature: float | None) -> dict:
    body = {
        "model": name,
        "prompt": PROMPT.format(i=i),
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(eot): -100},
    }
    if temperature is not None:
        body["temperature"] = temperature
    return body


async def run_level(
    url: str, name: str, streams: int, rounds: int, max_tokens: int, eot: int, temperature: float | None
) -> tuple[float, list[StreamResult]]:
    """`streams` clients, each sending `rounds` requests back to back; (wall seconds, results)."""
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def client_task(i: int) -> list[StreamResult]:
            return [
                await one_stream(client, request_body(name, i * rounds + k, max_tokens, eot, temperature))
                for k in range(rounds)
            ]

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client_task(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    return wall, [r for rs in per_client for r in rs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="small,gpt2", help="comma-separated: small, gpt2")
    ap.add_argument("--streams", default="1,4,8,16", help="concurrent streaming clients, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens every stream generates")
    ap.add_argument("--rounds", type=int, default=3, help="requests each client sends one after another")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="the server's --dtype (auto: bf16 where the CPU has it natively, what a user gets)",
    )
    ap.add_argument("--temperature", type=float, default=None, help="default: the API's (1.0); 0 is greedy")
    ap.add_argument("--server-args", default="", help="extra `pocketgpt serve` flags, e.g. '--max-batch 16'")
    ap.add_argument("--gpt2-files", type=Path, default=GPT2_FILES, help="folder with encoder.json + vocab.bpe")
    ap.add_argument("--quick", action="store_true", help="smoke run: small model, streams 1,4, 16 tokens, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.models, args.streams, args.max_tokens, args.rounds = "small", "1,4", 16, 1
    models = args.models.split(",")
    levels = [int(s) for s in args.streams.split(",")]
    if any(m not in SHAPES for m in models) or any(n < 1 for n in levels):
        ap.error(f"--models takes {', '.join(SHAPES)}; --streams positive integers")

    header(
        f"serving: pocketgpt serve, streaming /v1/completions, {args.max_tokens} tokens per request, "
        f"{args.rounds} round(s) per client"
    )
    from pocketgpt.device import pick_dtype

    load = os.getloadavg()
    dtype = str(pick_dtype(args.dtype, torch.device("cpu"))).removeprefix("torch.")
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | server --dtype {args.dtype} ({dtype}) "
        f"{args.server_args} | temperature "
        f"{args.temperature if args.temperature is not None else 'API default (1.0)'}"
        f" | random weights | httpx {httpx.__version__}"
    )
    root = Path(tempfile.mkdtemp(prefix="pocketgpt-bench-serve-"))
    rows = []
    try:
        tok, source = make_tokenizer(args.gpt2_files)
        print(f"vocabulary: {tok.n_vocab} tokens from {source}\n")
        for m in models:
            ckpt = make_checkpoint(m, root, tok)
            with Server(ckpt, dtype=args.dtype, extra=tuple(args.server_args.split()), log_dir=root) as srv:
                asyncio.run(run_level(srv.url, srv.name, 1, 1, 8, tok.eot_id, args.temperature))  # warm-up
                base = None
                for n in levels:
                    before = srv.health()
                    wall, res = asyncio.run(
                        run_level(srv.url, srv.name, n, args.rounds, args.max_tokens, tok.eot_id, args.temperature)
                    )
                    after = srv.health()
                    tokens = sum(r.tokens for r in res)
                    if any(r.tokens != args.max_tokens or r.finish != "length" for r in res):
                        print(
                            f"WARNING: {m} x{n}: not every stream gave {args.max_tokens} tokens "
                            f"({sorted({r.tokens for r in res})})"
                        )
                    agg = tokens / wall
                    base = base or agg
                    steps = after["decode_calls"] - before["decode_calls"]
                    ttft = [r.ttft for r in res if r.ttft is not None]
                    gaps = [g for r in res for g in r.gaps]
                    rows.append(
                        (
                            m,
                            n,
                            agg,
                            agg / base,
                            agg / n,
                            [percentile(ttft, q) for q in (50, 90, 99)],
                            [percentile(gaps, q) for q in (50, 90, 99)],
                            steps / wall,
                            tokens / max(steps, 1),
                        )
                    )
                    print(f"  {m} x{n}: {agg:.1f} tok/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(
        "| model | streams | aggregate tok/s | vs 1 stream | tok/s per stream | TTFT p50 / p90 / p99 ms | "
        "ITL p50 / p90 / p99 ms | decode steps/s | tokens per step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m, n, agg, ratio, per, ttft, itl, sps, tps in rows:
        print(
            f"| {LABELS[m]} | {n} | {agg:.1f} | {ratio:.2f}x | {per:.1f} | "
            f"{' / '.join(f'{x * 1e3:.0f}' for x in ttft)} | {' / '.join(f'{x * 1e3:.1f}' for x in itl)} | "
            f"{sps:.1f} | {tps:.2f} |"
        )
    for m in models:
        at8 = [r for r in rows if r[0] == m and r[1] == 8]
        if at8:
            print(
                f"target (8 streams >= 3x one stream), {LABELS[m]}: {at8[0][3]:.2f}x -> "
                f"{'met' if at8[0][3] >= 3 else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
