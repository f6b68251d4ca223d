"""int8 weight-only decoding: pocketgpt float32 vs pocketgpt int8 vs transformers float32, batch 1, greedy.

The same randomly initialised GPT-2 weights for all three (benchmarks/generate.py's `build`), a 16-token prompt and
128 new tokens, median of --runs after a warm-up (every engine and transformers timed interleaved, one run of each
in turn), this process's threads. int8 = model/quant.py's Int8Linear for
every Linear of the blocks and the (tied) head, run as the engine runs it (bf16 activations on CPUs with native bf16,
float32 elsewhere), with the kernel per weight shape that measured fastest here (also printed, with each
candidate's µs per call). The issue's targets at GPT-2 shape: int8 >= 2x pocketgpt float32 and >= 2.5x
transformers float32; at the tiny shape int8 no slower than float32.

    python benchmarks/quantize.py [--shapes gpt2,tiny] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from common import header, median_times, read_bandwidth
from generate import build  # noqa: E402  (benchmarks/generate.py: the same weights in transformers and pocketgpt)


def int8_bytes(model) -> int:
    """Bytes one decoded token reads: int8 weights + float32 scales, and the float tensors (one position row)."""
    from pocketgpt.model.quant import Int8Linear

    n = 0
    for m in model.modules():
        if isinstance(m, Int8Linear):
            n += m.weight_int8.numel() + 4 * m.scale.numel()
    emb = model.transformer.wte.weight
    return n + emb.shape[1] * emb.element_size() * 2  # a token row of wte and of wpe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="gpt2,tiny")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from pocketgpt.config import SampleConfig
    from pocketgpt.device import native_bf16
    from pocketgpt.generate.engine import Engine
    from pocketgpt.generate.kernels import describe
    from pocketgpt.model.quant import Int8Linear, quantize_model

    N = args.new_tokens
    header(f"int8 decode: pocketgpt int8 vs float32 vs transformers float32, batch 1, greedy, prompt 16, {N} new")
    bw = read_bandwidth()
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s | transformers {transformers.__version__}\n")
    rows = []
    for shape in args.shapes.split(","):
        hf, ours = build(shape)
        torch.manual_seed(1)
        prompt = torch.randint(0, 50257, (1, 16))
        sample = SampleConfig(max_new_tokens=N, temperature=0)

        def run_hf(hf=hf, prompt=prompt):
            with torch.no_grad():
                return hf.generate(prompt, max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)

        ids = prompt.tolist()
        f32 = Engine(copy.deepcopy(ours), dtype=torch.float32)
        q = copy.deepcopy(ours)
        quantize_model(q)
        i8 = Engine(q)  # its dtype: bf16 where native, float32 elsewhere
        # what FBGEMM would give everywhere (on CPUs with native bf16 it is chosen only where it measured faster: it
        # also quantizes the activations): the kernel is set on the engine's own copy of the layers
        fb_engine = Engine(copy.deepcopy(q), kernels="linear")
        for m in fb_engine.model.modules():
            if isinstance(m, Int8Linear):
                m.kernel = "fbgemm"
        engines = {"fp32": f32, "int8": i8, "fbgemm": fb_engine}
        if native_bf16(torch.device("cpu")):  # context: the float model in bf16 reads half of float32's bytes
            engines["bf16"] = Engine(copy.deepcopy(ours), dtype=torch.bfloat16)
        runners = {"hf": run_hf} | {k: (lambda e=e, ids=ids, s=sample: e.generate(ids, s)) for k, e in engines.items()}
        t = median_times(runners, args.runs)  # interleaved: one run of each in turn
        t_hf, t_f32, t_i8, t_fb, t_bf16 = t["hf"], t["fp32"], t["int8"], t["fbgemm"], t.get("bf16")
        same = sum(
            a == b
            for a, b in zip(
                f32.generate(prompt.tolist(), sample)[0][0].tokens, i8.generate(prompt.tolist(), sample)[0][0].tokens
            )
        )
        print(f"{shape}: int8 kernels ({str(i8.dtype).replace('torch.', '')} activations), µs per call:")
        for line in describe(i8.kernels):
            print(line)
        rows.append((shape, N / t_hf, N / t_f32, N / t_i8, bw / int8_bytes(q), same, t_bf16 and N / t_bf16, N / t_fb))

    print(
        f"\n{'shape':6s} {'HF fp32 tok/s':>13s} {'ours fp32 tok/s':>15s} {'ours int8 tok/s':>15s} "
        f"{'int8/ours fp32':>14s} {'int8/HF fp32':>12s} {'int8 bound':>10s} {'same greedy':>11s} "
        f"{'ours bf16':>9s} {'int8 fbgemm':>11s}"
    )
    for shape, hf_s, f32_s, i8_s, bound, same, bf16_s, fb_s in rows:
        print(
            f"{shape:6s} {hf_s:13.1f} {f32_s:15.1f} {i8_s:15.1f} {i8_s / f32_s:13.2f}x {i8_s / hf_s:11.2f}x "
            f"{bound:10.0f} {f'{same}/{N}':>11s} {f'{bf16_s:.1f}' if bf16_s else '-':>9s} {fb_s:11.1f}"
        )
    print(
        "int8 bound: read bandwidth / bytes one token reads (int8 weights + scales); same greedy: tokens equal to "
        "float32's (random weights: near-ties flip); int8 fbgemm: every int8 layer forced to FBGEMM's dynamic int8 "
        "(activations quantized too), for comparison only"
    )


if __name__ == "__main__":
    main()
