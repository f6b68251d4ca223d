"""Speculative decoding at batch 1: plain greedy vs n-gram (prompt lookup) vs a draft model, tokens/s.

No pretrained weights are at hand, so the script trains its own pair (character tokenizer, --steps steps,
bf16 autocast where native, cached in --cache): a target (4 x 256) and a draft (2 x 96), on the first 90% of
../shared/data/tinyshakespeare.txt (or the built-in corpus), a quarter ordinary windows of text and three quarters
"<paragraph>\\nRepeat:\\n<paragraph>", so both learn to copy. Two tasks on paragraphs of the held-out 10%:
- copy: prompt = paragraph + "\\nRepeat:\\n" + its first 12 characters; the answer copies the prompt;
- open: prompt = the paragraph's first 60 characters (no <|endoftext|>, like the plain windows); the answer is the
  model's own continuation.
Greedy, float32, at most --new-tokens per prompt (<|endoftext|> ends one), the median over --prompts prompts of
each mode's tokens/s; speculative output is checked equal to plain greedy's, token for token. Each speculative
mode runs twice: on the engine, and as a request through the continuous-batching scheduler that `serve` uses.

    python benchmarks/speculative.py [--steps 1500] [--prompts 8] [--new-tokens 150] [--k 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from common import header, load_line

from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.device import native_bf16
from pocketgpt.model import GPT

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
BLOCK = 256
PARA = (90, 110)  # characters per paragraph: a copy document fits the context
TARGET = dict(n_layer=4, n_head=4, n_embd=256, pos_encoding="rope")  # rope: copying is learnt sooner
DRAFT = dict(n_layer=2, n_head=2, n_embd=96, pos_encoding="rope")


def source_text() -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text()
    from pocketgpt.data.builtin import iter_builtin_texts

    return "\n\n".join(t for _, t in iter_builtin_texts())[:2_000_000]


def paragraphs(text: str, rng: random.Random, n: int) -> list[str]:
    """n random passages of PARA characters, starting at a line start."""
    out = []
    while len(out) < n:
        i = text.find("\n", rng.randrange(len(text) - 2 * PARA[1])) + 1
        out.append(text[i : i + rng.randint(*PARA)])
    return out


def batch(ids: list[int], tok, rng: random.Random, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A quarter ordinary windows of the text, three quarters copy documents (which start with <|endoftext|>, so
    the model can tell them apart); targets -1 on padding."""
    x = torch.full((bs, BLOCK), tok.eot_id, dtype=torch.long)
    y = torch.full((bs, BLOCK), -1, dtype=torch.long)
    for b in range(bs):
        if b % 4 == 0:
            i = rng.randrange(len(ids) - BLOCK - 1)
            seq = ids[i : i + BLOCK + 1]
        else:
            i = rng.randrange(len(ids) - 2 * PARA[1])
            para = ids[i : i + rng.randint(*PARA)]
            seq = [tok.eot_id] + para + tok.encode("\nRepeat:\n") + para + [tok.eot_id]
        seq = seq[: BLOCK + 1]
        x[b, : len(seq) - 1] = torch.tensor(seq[:-1])
        y[b, : len(seq) - 1] = torch.tensor(seq[1:])
    return x, y


def train(shape: dict, ids: list[int], tok, steps: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = GPT(ModelConfig(block_size=BLOCK, vocab_size=tok.n_vocab, dropout=0.0, **shape))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    t0 = time.perf_counter()
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * (1 - step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(ids, tok, rng, 12)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16(torch.device("cpu"))):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:  # the copy tokens' loss falls once copying is learnt
            print(f"  {shape} step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval()


def trained(cache: Path, steps: int):
    from pocketgpt.checkpoint import load_checkpoint, save_checkpoint
    from pocketgpt.tokenizer import Tokenizer

    text = source_text()
    if (cache / "target").is_dir() and (cache / "draft").is_dir():
        t, d = load_checkpoint(cache / "target"), load_checkpoint(cache / "draft")
        return t.model, d.model, t.tokenizer, text
    tok = Tokenizer.train([text], vocab_size=None, kind="char")
    ids = tok.encode(text[: int(len(text) * 0.9)])  # the last 10% is held out for the prompts
    target = train(TARGET, ids, tok, steps, seed=0)
    draft = train(DRAFT, ids, tok, steps, seed=1)
    save_checkpoint(cache / "target", "ckpt-0000001", target, tok, step=steps)
    save_checkpoint(cache / "draft", "ckpt-0000001", draft, tok, step=steps)
    return target, draft, tok, text


def run(engine, prompt: list[int], sc: SampleConfig, stop: int) -> tuple[list[int], float]:
    t = time.perf_counter()
    tokens = engine.generate([prompt], sc, stop_ids=[stop])[0][0].tokens
    return tokens, len(tokens) / (time.perf_counter() - t)


def run_scheduled(sched, prompt: list[int], sc: SampleConfig, stop: int) -> tuple[list[int], float]:
    """The same request through the continuous-batching scheduler (what `pocketgpt serve` runs), stepped here."""
    t = time.perf_counter()
    h = sched.submit(prompt, sc, [stop])
    while h.finish_reason is None:
        sched.step()
    tokens = h.result().tokens
    return tokens, len(tokens) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps of each model (cached in --cache)")
    ap.add_argument("--cache", default="runs/bench-speculative")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=150)
    ap.add_argument("--k", type=int, default=4, help="draft tokens per model pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kernels", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pocketgpt.generate.engine import Engine

    header("speculative decoding, batch 1, greedy")
    print(load_line())
    target, draft, tok, text = trained(Path(args.cache), args.steps)
    print(
        f"target {TARGET} {target.num_params() / 1e6:.2f}M params, draft {DRAFT} {draft.num_params() / 1e6:.2f}M, "
        f"char vocabulary {tok.n_vocab}, context {BLOCK}, k={args.k}, {args.new_tokens} new tokens"
    )
    engine = Engine(target, draft=draft, kernels=args.kernels)
    from pocketgpt.generate.scheduler import Scheduler

    sched = Scheduler(engine)
    paras = paragraphs(text[int(len(text) * 0.9) :], random.Random(1234), args.prompts)  # held out
    tasks = {
        "copy": [[tok.eot_id] + tok.encode(p + "\nRepeat:\n" + p[:12]) for p in paras],
        "open": [tok.encode(p[:60]) for p in paras],  # no <|endoftext|> first: like the plain windows of training
    }
    print("| task | mode | tok/s (median) | speed-up | acceptance | tokens per model pass | same tokens |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for task, prompts in tasks.items():
        plain_sc = SampleConfig(max_new_tokens=args.new_tokens, temperature=0)
        run(engine, prompts[0], plain_sc, tok.eot_id)  # warm-up
        plain = [run(engine, p, plain_sc, tok.eot_id) for p in prompts]
        base = statistics.median(r for _, r in plain)
        if task == "copy":  # does the model copy? (else the copy task measures nothing)
            exact = sum(tok.decode(t) == p[12:] for (t, _), p in zip(plain, paras))
            notes.append(f"copy task: the target copied {exact} of {len(paras)} paragraphs exactly")
        else:
            notes.append(f"open task, first answer: {tok.decode(prompts[0])!r} -> {tok.decode(plain[0][0])!r}")
        print(f"| {task} | plain | {base:.1f} | 1.00x | | 1.00 | |")
        for mode in ("ngram", "draft"):
            sc = SampleConfig(max_new_tokens=args.new_tokens, temperature=0, speculative=mode, draft_tokens=args.k)
            run(engine, prompts[0], sc, tok.eot_id)
            rates, same, drafted, accepted, tokens, passes = [], True, 0, 0, 0, 0
            for p, (want, _) in zip(prompts, plain):
                got, rate = run(engine, p, sc, tok.eot_id)
                s = engine.spec_stats
                rates.append(rate)
                same &= got == want
                drafted, accepted, tokens, passes = (
                    drafted + s.drafted,
                    accepted + s.accepted,
                    tokens + s.tokens,
                    passes + s.forwards,
                )
            r = statistics.median(rates)
            acc = accepted / drafted if drafted else 0.0
            print(
                f"| {task} | {mode} | {r:.1f} | **{r / base:.2f}x** | {acc:.1%} | {tokens / passes:.2f} | "
                f"{'yes' if same else 'NO'} |"
            )
            runs = [run_scheduled(sched, p, sc, tok.eot_id) for p in prompts]
            r = statistics.median(rate for _, rate in runs)
            same = all(got == want for (got, _), (want, _) in zip(runs, plain))
            print(
                f"| {task} | {mode}, scheduler (serve) | {r:.1f} | **{r / base:.2f}x** | | | {'yes' if same else 'NO'} |"
            )
    for line in notes:
        print(line)
    print(load_line())


if __name__ == "__main__":
    main()
