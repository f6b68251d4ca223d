"""The per-token cost of structured output: llguidance's grammar mask, as the scheduler applies it before each pick.

    python benchmarks/structured.py [--gpt2-files ../shared/data/gpt2] [--passes 2]

A JSON schema (a bounded string, an integer, an array of strings) over GPT-2's vocabulary plus the chat specials
(or a BPE trained here when GPT-2's files are missing). A compact JSON answer is fed token by token through the
matcher, and each step's `Constraint.mask` (compute the bitmask, apply it to a (V,) float32 row) is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from common import header, load_line
from serve import GPT2_FILES, make_tokenizer

from pocketgpt.generate.structured import ConstraintFactory, json_grammar

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
}
ANSWER = {"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpt2-files", type=Path, default=GPT2_FILES)
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args()
    header("structured output: llguidance mask per token")
    print(load_line())
    tok, source = make_tokenizer(args.gpt2_files)
    t = time.perf_counter()
    end = tok.special_tokens["<|end|>"]
    factory = ConstraintFactory(tok, json_grammar(SCHEMA), n_vocab=tok.n_vocab, end_ids=[end])
    print(f"vocabulary {tok.n_vocab} ({source}); tokenizer view + grammar built in {time.perf_counter() - t:.2f} s")
    ids = tok.encode(json.dumps(ANSWER, separators=(",", ":")))
    for p in range(args.passes):
        c, row, times = factory(), torch.zeros(tok.n_vocab), []
        for tid in ids:
            t0 = time.perf_counter()
            c.mask(row.clone())
            times.append(time.perf_counter() - t0)
            c.consume(tid)
        times.sort()
        print(
            f"pass {p + 1}: {len(ids)} tokens, mask median {times[len(times) // 2] * 1e3:.2f} ms, "
            f"p90 {times[int(len(times) * 0.9)] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms; grammar complete: {c.done}"
        )


if __name__ == "__main__":
    main()
