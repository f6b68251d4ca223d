"""pocketgpt against llama.cpp on the same weights, in one run: batch-1 decode, then serving.

    python benchmarks/llamacpp_build.py              # once: builds llama.cpp into ~/.cache/pocketgpt/llama.cpp
    python benchmarks/llamacpp.py [--shapes tiny,gpt2] [--parts decode,serve] [--threads 2]

The weights: a random checkpoint of each shape (seed 0, GELU-tanh, GPT-2's vocabulary from ../shared/data/gpt2
when present, else a BPE trained here), exported by `pocketgpt convert --to-gguf` as f32, bf16 and q8_0.

decode: tokens/s of 128 greedy decode steps at batch 1 after a 1-token prompt, median of --runs.
  llama.cpp: `llama-bench -p 0 -n 128 -t THREADS -r RUNS` (its tg128: 128 one-token decodes from an empty cache);
  pocketgpt: Engine.generate([[eot]], max_new_tokens=128) (one 1-token prefill, 127 decodes), float32 / bf16 /
  int8 (`--quantize int8`: per-channel int8 weights, the kernel chosen by measurement). Pairs: f32-f32,
  bf16-bf16, int8-q8_0 (both 8-bit weights with a scale: per output channel in pocketgpt, per 32 in q8_0).
serve: benchmarks/serve.py's streaming client (/v1/completions, stream=true, 128 tokens, end-of-text banned)
  against `llama-server -np 8 -cb` and `pocketgpt serve` (max batch 8), same thread count, float32 weights, at
  1/4/8/16 concurrent streams: aggregate tok/s, TTFT and inter-token latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llamacpp_build
import serve as serve_bench
import torch
from common import header, load_line, read_bandwidth

from pocketgpt.device import native_bf16, peak_flops

GGUF_TYPES = ("f32", "bf16", "q8_0")
PAIRS = (("float32", "f32"), ("bfloat16", "bf16"), ("int8", "q8_0"))


def export_all(ckpt: Path, root: Path) -> dict[str, Path]:
    from pocketgpt.interop.gguf_export import convert_to_gguf

    return {t: convert_to_gguf(ckpt, root / f"{ckpt.name}-{t}.gguf", dtype=t) for t in GGUF_TYPES}


def profile_decode(ckpt: Path, n: int = 32, top: int = 6) -> str:
    """Where pocketgpt's float32 batch-1 decode spends its time: torch.profiler's top ops by self CPU time over n
    tokens, and the share of wall time no op accounts for (Python and dispatch between ops)."""
    from pocketgpt.checkpoint import load_checkpoint
    from pocketgpt.config import SampleConfig
    from pocketgpt.generate.engine import Engine

    c = load_checkpoint(ckpt)
    eng = Engine(c.model)
    sample = SampleConfig(temperature=0, max_new_tokens=n, logit_bias={c.tokenizer.eot_id: -100.0})
    eng.generate([[c.tokenizer.eot_id]], sample)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        eng.generate([[c.tokenizer.eot_id]], sample)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    events.sort(key=lambda e: -e.self_cpu_time_total)
    parts = [f"{e.key} {100 * e.self_cpu_time_total / 1e6 / wall:.0f}%" for e in events[:top]]
    return (
        f"{wall / n * 1e3:.2f} ms/token under the profiler; "
        + ", ".join(parts)
        + (f"; outside any op (Python, dispatch): {100 * max(0.0, wall - ops) / wall:.0f}%")
    )


def onnx_decode(ckpt: Path, root: Path, threads: int, runs: int, n: int = 128) -> float:
    """The same decode through onnxruntime (`convert --to-onnx` + pocketgpt.interop.onnx_runtime.OnnxGPT)."""
    from pocketgpt.checkpoint import load_checkpoint
    from pocketgpt.interop.onnx_export import convert_to_onnx
    from pocketgpt.interop.onnx_runtime import OnnxGPT

    runner = OnnxGPT(convert_to_onnx(ckpt, root / f"{ckpt.name}-onnx"), threads=threads)
    eot = load_checkpoint(ckpt).tokenizer.eot_id
    runner.generate([[eot]], max_new_tokens=8)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = runner.generate([[eot]], max_new_tokens=n)
        times.append(time.perf_counter() - t0)
    return len(out[0]) / statistics.median(times)  # no stop ids: always n tokens


def llama_bench(gguf: Path, threads: int, runs: int, n: int = 128) -> float:
    cmd = [str(llamacpp_build.bin_dir() / "llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(n)]
    cmd += ["-t", str(threads), "-r", str(runs), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    return float(rows[0]["avg_ts"])


def pocketgpt_decode(ckpt: Path, precision: str, runs: int, n: int = 128) -> tuple[float, str]:
    from pocketgpt.checkpoint import load_checkpoint
    from pocketgpt.config import SampleConfig
    from pocketgpt.generate.engine import Engine
    from pocketgpt.generate.kernels import summary
    from pocketgpt.model.quant import quantize_model

    c = load_checkpoint(ckpt)
    model = c.model
    if precision == "int8":
        quantize_model(model)
        eng = Engine(model)
    else:
        eng = Engine(model, dtype=getattr(torch, precision))
    ban = {c.tokenizer.eot_id: -100.0}
    sample = SampleConfig(temperature=0, max_new_tokens=n, logit_bias=ban)
    prompt = [[c.tokenizer.eot_id]]
    eng.generate(prompt, SampleConfig(temperature=0, max_new_tokens=8))  # warm-up (kernels chosen at load)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = eng.generate(prompt, sample)
        times.append(time.perf_counter() - t0)
        assert len(out[0][0].tokens) == n
    return n / statistics.median(times), summary(eng.kernels)


class LlamaServer:
    def __init__(self, gguf: Path, threads: int, slots: int = 8, ctx_per_slot: int = 1024, log_dir: Path = None):
        self.port = serve_bench.free_port()
        self.url, self.name = f"http://127.0.0.1:{self.port}", "llama"
        self.log_path = Path(log_dir or tempfile.gettempdir()) / f"llama-server-{self.port}.log"
        self.log = open(self.log_path, "w")
        cmd = [str(llamacpp_build.bin_dir() / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "-t", str(threads), "-np", str(slots), "-cb"]
        cmd += ["-c", str(slots * ctx_per_slot), "--alias", self.name]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        serve_bench.wait_until_healthy(self, 120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def serve_level(url, name, n, rounds, max_tokens, eot) -> tuple:
    wall, res = asyncio.run(serve_bench.run_level(url, name, n, rounds, max_tokens, eot, None))
    tokens = sum(r.tokens or (len(r.gaps) + 1) for r in res)  # llama-server may send no usage chunk
    ttft = [r.ttft for r in res if r.ttft is not None]
    gaps = [g for r in res for g in r.gaps]
    pct = serve_bench.percentile
    return tokens / wall, [pct(ttft, q) for q in (50, 90)], [pct(gaps, q) for q in (50, 90)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,gpt2")
    ap.add_argument("--parts", default="decode,serve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    if not llamacpp_build.built():
        raise SystemExit(
            f"llama.cpp is not built in {llamacpp_build.bin_dir()}: run python benchmarks/llamacpp_build.py"
        )
    torch.set_num_threads(args.threads)
    header("pocketgpt vs llama.cpp, same GGUF-exported weights, same thread count, one run")
    dev = torch.device("cpu")
    p32 = peak_flops(dev, torch.float32, n=2048)
    p16 = peak_flops(dev, torch.bfloat16, n=2048) if native_bf16(dev) else 0
    print(
        f"{load_line()} | matmul peak float32 {p32 / 1e9:.0f} GFLOP/s, bf16 {p16 / 1e9:.0f} GFLOP/s | "
        f"read bandwidth {read_bandwidth() / 1e9:.1f} GB/s | llama.cpp {llamacpp_build.VERSION} "
        f"(llama-cpp-python's vendor/, GGML_NATIVE) | threads {args.threads}"
    )
    shapes_map = {"tiny": "small", "gpt2": "gpt2"}
    root = Path(tempfile.mkdtemp(prefix="pocketgpt-bench-llamacpp-"))
    decode_rows, serve_rows, f32_rate, profiles = [], [], {}, {}
    try:
        tok, source = serve_bench.make_tokenizer()
        print(f"vocabulary: {tok.n_vocab} tokens from {source}")
        for shape in args.shapes.split(","):
            ckpt = serve_bench.make_checkpoint(shapes_map[shape], root, tok)
            ggufs = export_all(ckpt, root)
            if "decode" in args.parts:
                for ours, theirs in PAIRS:
                    if ours == "bfloat16" and not native_bf16(dev):
                        continue
                    pg, kernels = pocketgpt_decode(ckpt, ours, args.runs)
                    ll = llama_bench(ggufs[theirs], args.threads, args.runs)
                    f32_rate[shape] = ll if theirs == "f32" else f32_rate[shape]
                    decode_rows.append((shape, ours, pg, kernels, theirs, ll))
                    print(f"  decode {shape} {ours}: pocketgpt {pg:.1f} tok/s, llama.cpp {theirs} {ll:.1f}", flush=True)
                profiles[shape] = profile_decode(ckpt)
                ox = onnx_decode(ckpt, root, args.threads, args.runs)
                decode_rows.append((shape, "onnxruntime float32", ox, "", "f32", f32_rate[shape]))
                print(f"  decode {shape} onnxruntime: {ox:.1f} tok/s", flush=True)
            if "serve" in args.parts:
                levels = [int(s) for s in args.streams.split(",")]
                with LlamaServer(ggufs["f32"], args.threads, log_dir=root) as ls:
                    serve_level(ls.url, ls.name, 1, 1, 8, tok.eot_id)  # warm-up
                    theirs = {
                        n: serve_level(ls.url, ls.name, n, args.rounds, args.max_tokens, tok.eot_id) for n in levels
                    }
                with serve_bench.Server(ckpt, dtype="float32", log_dir=root) as ps:
                    serve_level(ps.url, ps.name, 1, 1, 8, tok.eot_id)
                    ours = {
                        n: serve_level(ps.url, ps.name, n, args.rounds, args.max_tokens, tok.eot_id) for n in levels
                    }
                for n in levels:
                    serve_rows.append((shape, n, ours[n], theirs[n]))
                    print(
                        f"  serve {shape} x{n}: pocketgpt {ours[n][0]:.1f}, llama-server {theirs[n][0]:.1f}", flush=True
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{load_line()}")
    if decode_rows:
        print("\n| shape | pocketgpt | tok/s | kernels | llama.cpp | tok/s | pocketgpt / llama.cpp |")
        print("|---|---|---:|---|---|---:|---:|")
        for shape, ours, pg, kernels, theirs, ll in decode_rows:
            print(f"| {shape} | {ours} | {pg:.1f} | {kernels} | {theirs} | {ll:.1f} | {pg / ll:.2f}x |")
        for shape, text in profiles.items():
            print(f"\nwhere pocketgpt float32 decode spends its time, {shape}: {text}")
    if serve_rows:
        print(
            "\n| shape | streams | pocketgpt tok/s | llama-server tok/s | ratio | TTFT p50/p90 ms (pocketgpt | llama) "
            "| ITL p50/p90 ms (pocketgpt | llama) |"
        )
        print("|---|---:|---:|---:|---:|---|---|")
        for shape, n, (a, at, ai), (b, bt, bi) in serve_rows:
            ms = lambda xs: " / ".join(f"{x * 1e3:.0f}" for x in xs)  # noqa: E731
            print(
                f"| {shape} | {n} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {ms(at)} \\| {ms(bt)} | {ms(ai)} \\| {ms(bi)} |"
            )


if __name__ == "__main__":
    main()
