"""Benchmark: tokenizer training time and encoding throughput against the peers.

Claim checked: pocketgpt trains a byte-level BPE vocabulary in seconds (Hugging Face
`tokenizers` does the training) and encodes at tiktoken's speed (tiktoken does the encoding).
Peers: Hugging Face `tokenizers` (ByteLevel BPE trained to the same vocab size, `encode` and
`encode_batch`) and tiktoken (no trainer: an Encoding from pocketgpt's trained ranks, and
GPT-2's encoding from ../shared/data/gpt2 when present). Ratios are peer / pocketgpt with the
same vocabulary (> 1: the peer is faster). Prints the CPU; compare only within one run.

    python benchmarks/tokenizer.py [--data PATH] [--mb 10] [--vocab-size 8192] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tiktoken  # noqa: E402
import tokenizers  # noqa: E402
from tiktoken.load import data_gym_to_mergeable_bpe_ranks  # noqa: E402

from pocketgpt.device import describe_cpu  # noqa: E402
from pocketgpt.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402
from pocketgpt.tokenizer.bpe import GPT2_PATTERN  # noqa: E402


def load_text(path: Path, mb: float) -> str:
    if not path.is_file():
        sys.exit(f"data file not found: {path} (pass --data)")
    base = path.read_text(encoding="utf-8", errors="surrogateescape")
    want = int(mb * 1_000_000)
    text = base * max(1, -(-want // len(base.encode("utf-8", "surrogateescape"))))
    return text[:want]  # chars; equals bytes for ASCII corpora such as tiny Shakespeare


def best_time(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def hf_train(docs: list[str], vocab_size: int):
    from tokenizers import models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    hf.train_from_iterator(docs, trainer=trainer)
    return hf


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/tinyshakespeare.txt")
    ap.add_argument("--mb", type=float, default=10.0, help="MB of text (the file repeated as needed)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3, help="encode timings: best of this many runs")
    ap.add_argument("--gpt2", type=Path, default=ROOT.parent / "shared/data/gpt2")
    args = ap.parse_args(argv)

    text = load_text(args.data, args.mb)
    n_bytes = len(text.encode("utf-8", "surrogateescape"))
    docs = [d for d in text.split("\n\n") if d]
    doc_bytes = sum(len(d.encode("utf-8", "surrogateescape")) for d in docs)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {describe_cpu()} | threads available: {threads} (os.cpu_count() = {os.cpu_count()})")
    print(f"python {platform.python_version()} | tiktoken {tiktoken.__version__} | tokenizers {tokenizers.__version__}")
    print(f"data: {args.data} -> {n_bytes / 1e6:.1f} MB, {len(docs)} documents (split on blank lines)")
    print(f"vocab size {args.vocab_size}; encode timings are the best of {args.repeat}\n")

    rows = []  # (name, train_s, single MB/s, batch MB/s, tokens, reference row name)

    def measure(name, ref, train_s, single, batch):
        t1, ids = best_time(lambda: single(text), args.repeat)
        t2, _ = best_time(lambda: batch(docs), args.repeat)
        rows.append((name, train_s, n_bytes / 1e6 / t1, doc_bytes / 1e6 / t2, len(ids), ref))
        return ids

    # 1) pocketgpt BPE: train with HF's trainer, encode with tiktoken
    t0 = time.perf_counter()
    tok = Tokenizer.train(docs, args.vocab_size)
    train_s = time.perf_counter() - t0
    ours = measure("pocketgpt bpe", "pocketgpt bpe", train_s, tok.encode, tok.encode_batch)

    # 2) Hugging Face tokenizers, same data and vocab size
    t0 = time.perf_counter()
    hf = hf_train(docs, args.vocab_size)
    hf_s = time.perf_counter() - t0
    measure("HF tokenizers", "pocketgpt bpe", hf_s, lambda t: hf.encode(t).ids, hf.encode_batch)

    # 3) tiktoken with pocketgpt's ranks: the same ids, so the overhead of our wrapper shows
    enc = tiktoken.Encoding("ours", pat_str=GPT2_PATTERN, mergeable_ranks=tok.mergeable_ranks(), special_tokens={})
    tk = measure(
        "tiktoken (our ranks)",
        "pocketgpt bpe",
        None,
        enc.encode_ordinary,
        lambda d: enc.encode_ordinary_batch(d, num_threads=threads),
    )
    assert tk == ours, "tiktoken with our ranks must give pocketgpt's ids"

    # 4) char kind, for scale
    t0 = time.perf_counter()
    char = Tokenizer.train(docs, None, kind="char")
    measure("pocketgpt char", None, time.perf_counter() - t0, char.encode, char.encode_batch)

    # 5) GPT-2's vocabulary: pocketgpt loading the files vs tiktoken's GPT-2 encoding
    if (args.gpt2 / "vocab.bpe").is_file():
        g = Tokenizer.from_gpt2_files(args.gpt2)
        ours_g = measure("pocketgpt gpt2", "pocketgpt gpt2", None, g.encode, g.encode_batch)
        ranks = data_gym_to_mergeable_bpe_ranks(str(args.gpt2 / "vocab.bpe"), str(args.gpt2 / "encoder.json"))
        genc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
        tk_g = measure(
            "tiktoken gpt2",
            "pocketgpt gpt2",
            None,
            genc.encode_ordinary,
            lambda d: genc.encode_ordinary_batch(d, num_threads=threads),
        )
        assert tk_g == ours_g, "pocketgpt's GPT-2 ids must equal tiktoken's"
    else:
        print(f"(GPT-2 files not found in {args.gpt2}: GPT-2 rows skipped)\n")

    by_name = {r[0]: r for r in rows}
    header = f"{'tokenizer':<22}{'train s':>9}{'encode MB/s':>13}{'batch MB/s':>12}{'bytes/tok':>11}"
    header += f"{'train x':>9}{'encode x':>10}{'batch x':>9}"
    print(header)
    print("-" * len(header))
    for name, train_s, single, batch, n_tok, ref in rows:
        tr = "n/a" if train_s is None else f"{train_s:.2f}"
        if ref is None:  # no peer with this vocabulary: shown for scale
            ratios = f"{'-':>9}{'-':>10}{'-':>9}"
        else:
            r = by_name[ref]
            trx = "n/a" if train_s is None or r[1] is None else f"{r[1] / train_s:.2f}"
            ratios = f"{trx:>9}{single / r[2]:>10.2f}{batch / r[3]:>9.2f}"
        print(f"{name:<22}{tr:>9}{single:>13.1f}{batch:>12.1f}{n_bytes / n_tok:>11.2f}{ratios}")
    print("\nx columns: peer / pocketgpt with the same vocabulary (train x: pocketgpt time / peer time;")
    print("> 1 means the peer is faster). HF tokenizers' vocab ids differ from ours; bytes/tok compares merges.")


if __name__ == "__main__":
    main()
