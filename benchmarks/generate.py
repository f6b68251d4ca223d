"""Decoding speed: pocketgpt's engine against Hugging Face transformers' generate(), on the same weights.

Both get the same randomly initialised GPT-2 weights (built in transformers, converted with
pocketgpt.interop), a 16-token prompt and 128 new tokens, greedy, on the CPU with this process's threads.
Median of --runs runs after a warm-up, transformers and each precision timed interleaved (one run of each in
turn, so the VM's drift falls on all alike); batch 1 and batch 8. Also prints the memory-bandwidth bound at
batch 1 (weight bytes read per token / measured read bandwidth) and the fraction of it reached.

    python benchmarks/generate.py [--shapes gpt2,tiny] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from common import header, median_times, read_bandwidth

from pocketgpt.device import native_bf16

SHAPES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768), "tiny": dict(n_layer=4, n_head=4, n_embd=128)}


def build(shape: str):
    import transformers

    from pocketgpt.interop import config_from_hf, from_hf_state_dict
    from pocketgpt.model import GPT

    torch.manual_seed(0)
    hc = transformers.GPT2Config(n_positions=1024, vocab_size=50257, activation_function="gelu_new", **SHAPES[shape])
    hf = transformers.GPT2LMHeadModel(hc).eval()
    cfg = config_from_hf(hc.to_dict())
    ours = GPT(cfg)
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg), strict=False)
    return hf, ours.eval()


def weight_bytes_per_token(model, bytes_per_param: int) -> int:
    """Every weight is read once per decoded token, except the position table (one row)."""
    n = model.num_params() - model.transformer.wpe.weight.numel()
    return n * bytes_per_param


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="gpt2,tiny")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument(
        "--kernels", default="auto", help="auto (measured per shape on this machine), linear, mv, split, t or packed"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from pocketgpt.config import SampleConfig
    from pocketgpt.generate.engine import Engine
    from pocketgpt.generate.kernels import summary

    header(
        "decode speed: pocketgpt Engine vs transformers generate(), greedy, prompt 16, "
        f"{args.new_tokens} new tokens, median of {args.runs}"
    )
    bw = read_bandwidth()
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s | transformers {transformers.__version__}\n")
    N = args.new_tokens
    rows = []
    for shape in args.shapes.split(","):
        hf, ours = build(shape)
        precisions = [("float32", torch.float32)] + (
            [("bfloat16", torch.bfloat16)] if native_bf16(torch.device("cpu")) else []
        )
        for B in (1, 8):
            torch.manual_seed(1)
            prompt = torch.randint(0, 50257, (B, 16))

            def run_hf(hf=hf, prompt=prompt):
                with torch.no_grad():
                    return hf.generate(prompt, max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)

            engines = {p: Engine(copy.deepcopy(ours), dtype=d, kernels=args.kernels) for p, d in precisions}
            sample, ids = SampleConfig(max_new_tokens=N, temperature=0), prompt.tolist()
            runners = {"hf": run_hf} | {
                p: (lambda eng=eng, ids=ids, sample=sample: eng.generate(ids, sample)) for p, eng in engines.items()
            }
            t = median_times(runners, args.runs)  # interleaved: transformers and each precision in turn
            hf_ids = run_hf()[:, 16:].tolist()
            for pname, dtype in precisions:
                eng = engines[pname]
                same = [r[0].tokens for r in eng.generate(ids, sample)] == hf_ids
                bound = bw / weight_bytes_per_token(ours, 4 if dtype == torch.float32 else 2)
                rows.append(
                    (
                        shape,
                        B,
                        pname,
                        B * N / t[pname],
                        B * N / t["hf"],
                        bound if B == 1 else None,
                        same,
                        summary(eng.kernels),
                    )
                )
            del engines, runners

    print(
        f"{'shape':6s} {'batch':>5s} {'precision':9s} {'pocketgpt tok/s':>15s} {'HF fp32 tok/s':>13s} "
        f"{'ratio':>6s} {'bound tok/s':>11s} {'of bound':>8s} {'kernels':>11s}  same tokens as HF"
    )
    for shape, B, p, ours_s, hf_s, bound, same, kern in rows:
        b = f"{bound:11.1f} {100 * ours_s / bound:7.0f}%" if bound else f"{'':11s} {'':8s}"
        print(
            f"{shape:6s} {B:5d} {p:9s} {ours_s:15.1f} {hf_s:13.1f} {ours_s / hf_s:5.2f}x {b} {kern:>11s}  "
            f"{'yes' if same else 'no (bf16 rounding)' if p == 'bfloat16' else 'NO'}"
        )


if __name__ == "__main__":
    main()
