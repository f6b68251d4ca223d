"""One prompt traced through a real model, as the numbers docs/how-gpt-works.md quotes (section 12).

    python docs/trace.py                              # a tiny model trained here (seeded, seconds) -> stdout
    python docs/trace.py --out docs/trace.md          # the committed file; tests/test_trace.py regenerates it
    python docs/trace.py --checkpoint runs/quickstart --prompt "The king" --out trace-quickstart.md

What it prints, all from pocketgpt's own code: the prompt's token ids and pieces (explain.explain_tokens), the
rows of the embedding and position tables the model adds (model.transformer.wte / .wpe), one head's attention
scores q·k/√hs before and after the causal mask and after the softmax (computed step by step from the layer's own
weights, and checked against the weights `model.hidden(..., attn_probs=[])` hands out), the top-5 next tokens
with their probabilities, and the KV cache's shape as the engine prefills the prompt and decodes 3 tokens
(Engine.prefill / Engine.decode over a KVCache; each decode's logits checked against a full forward pass).

Without --checkpoint it trains a tiny model itself (seconds), saves it as a pocketgpt checkpoint in a temporary
folder (float32 weights, as every checkpoint) and loads it back, so both ways run the same path. Deterministic: the
tiny model starts from numpy-drawn weights (`portable_init`) and trains on text this script makes, everything runs on
one CPU thread in float64 (so rounding to 4 decimals hides any difference between machines: the slow test in
tests/test_trace.py runs it with other CPU kernels), and the output holds no times, paths or versions.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pocketgpt.checkpoint import load_checkpoint, prompt_bos, save_checkpoint
from pocketgpt.config import ModelConfig
from pocketgpt.explain import explain_tokens
from pocketgpt.generate.engine import Engine
from pocketgpt.generate.sampling import greedy
from pocketgpt.model import GPT
from pocketgpt.model.positional import apply_rotary
from pocketgpt.tokenizer import Tokenizer

SEED = 0
PROMPT = "a residual stream carries"
SHOW = 4  # values shown per embedding row
DECODE_STEPS = 3
WORDS = (
    "the model reads tokens and predicts the next one . attention mixes values from earlier positions . "
    "a residual stream carries information through every block . the cache keeps keys and values ."
).split()


def training_text(n_sentences: int = 300, seed: int = SEED) -> str:
    """Sentences of WORDS: mostly the sentences above, some shuffled, so a tiny model has something to learn."""
    rng = random.Random(seed)
    sentences = " ".join(WORDS).split(" . ")
    out = []
    for _ in range(n_sentences):
        s = rng.choice(sentences).split()
        if rng.random() < 0.3:
            rng.shuffle(s)
        out.append(" ".join(s).strip(" .") + " .")
    return " ".join(out)


def portable_init(model: GPT, seed: int) -> GPT:
    """GPT's initialisation (normal(0, init_std) matrices, c_proj scaled by 1/sqrt(2 n_layer), zero biases, unit
    norms), with the numbers drawn by numpy. torch's CPU `normal_` rounds differently with AVX2 and AVX-512
    (measured: 13,597 of 38,016 initial values differed by up to 3e-8), and training grows that into the fourth
    decimal; numpy's generator gives the same numbers on every machine."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    with torch.no_grad():
        for name, p in model.named_parameters():  # the tied head is wte: named once
            if p.dim() >= 2:
                std = cfg.init_std / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else cfg.init_std
                p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape))) * std)
    return model


def tiny_model(steps: int = 150) -> tuple[GPT, Tokenizer, str]:
    """A 2-layer, 32-wide GPT trained for `steps` AdamW steps on `training_text`, in float64 from a portable
    initialisation, so that every machine computes the same weights to far more digits than the trace shows."""
    text = training_text()
    tok = Tokenizer.train([text], vocab_size=360)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tok.n_vocab)
    model = portable_init(GPT(cfg).double(), SEED)
    data = torch.tensor([tok.eot_id] + tok.encode(text))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(SEED)
    T = cfg.block_size
    for _ in range(steps):
        starts = torch.randint(0, len(data) - T - 1, (16,), generator=g)
        buf = torch.stack([data[s : s + T + 1] for s in starts])  # (16, T+1)
        logits, _ = model(buf[:, :-1])  # (16, T, V) float64; GPT.forward's own loss would be float32
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), buf[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    about = (
        f"a tiny model trained by `docs/trace.py` itself: {cfg.n_layer} layers, {cfg.n_head} heads, "
        f"n_embd {cfg.n_embd}, block_size {cfg.block_size}, a {tok.n_vocab}-token BPE, {steps} AdamW steps "
        f"on generated text (seed {SEED}); final training loss {loss.item():.2f} nats/token"
    )
    return model.eval(), tok, about


def fmt(x: float) -> str:
    if x == float("-inf"):
        return "-inf".rjust(8)
    return f"{x:8.4f}".replace("-0.0000", " 0.0000")


def row(values) -> str:
    return " ".join(fmt(float(v)) for v in values)


def matrix(m: torch.Tensor, labels: list[str]) -> str:
    width = max(len(s) for s in labels)
    head = " " * (width + 2) + " ".join(s[:8].rjust(8) for s in labels)
    return "\n".join([head] + [f"{lab.ljust(width)}  {row(r)}" for lab, r in zip(labels, m)])


def piece(t) -> str:
    return t.text if t.special else repr(t.text)


@torch.no_grad()
def head_scores(model: GPT, ids: list[int], layer: int = 0, head: int = 0) -> tuple[torch.Tensor, ...]:
    """Layer `layer`'s input, run through the model's own modules up to the scores of head `head`:
    (scores, masked scores, softmax) as (T, T) tensors."""
    tr = model.transformer
    idx = torch.tensor([ids])
    pos = torch.arange(len(ids))
    x = tr.wpe.add_to_input(tr.wte(idx), pos)  # steps 1) and 2), as GPT.hidden does (dropout is off in eval)
    rot = tr.wpe.rotation(pos)
    for block in tr.h[:layer]:
        x = block(x, rot)
    attn = tr.h[layer].attn
    B, T, C = x.shape
    q, k, _ = attn.c_attn(tr.h[layer].ln_1(x)).split(C, dim=2)
    q = q.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)
    if attn.qk_norm:
        q, k = F.rms_norm(q, (attn.head_dim,)), F.rms_norm(k, (attn.head_dim,))
    q, k = apply_rotary(q, rot), apply_rotary(k, rot)
    scores = (q @ k.transpose(-2, -1))[0, head] / attn.head_dim**0.5  # (T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    masked = scores.masked_fill(future, float("-inf"))
    return scores, masked, masked.softmax(dim=-1)


def trace(model: GPT, tok: Tokenizer, prompt: str, bos: bool, about: str) -> str:
    model = model.double().eval()
    cfg = model.config
    ids = ([tok.eot_id] if bos else []) + tok.encode(prompt)
    exp = explain_tokens(model, tok, ids, top_k=5)
    labels = [piece(t) for t in exp.tokens]
    out = [
        "# One prompt through a GPT, in numbers",
        "",
        f"Generated by `python docs/trace.py --out docs/trace.md`; `tests/test_trace.py` checks that this file is "
        f"what the script writes. Model: {about}. Computed in float64 on one thread, rounded to 4 decimals.",
        "",
        "## 1. Tokens",
        "",
        f"The prompt {prompt!r}" + (", after `<|endoftext|>` (as `generate` frames it)" if bos else "") + ":",
        "",
        "```text",
        "pos  id  piece",
        *[f"{i:3d} {t.id:3d}  {piece(t)}" for i, t in enumerate(exp.tokens)],
        "```",
        "",
    ]
    tr = model.transformer
    pos = torch.arange(len(ids))
    with torch.no_grad():
        wte = tr.wte.weight[ids]  # (T, C)
        wpe = tr.wpe.add_to_input(torch.zeros_like(wte), pos)  # (T, C): what step 2 adds (zeros for RoPE)
    out += [
        f"## 2. Embedding rows (the first {SHOW} of {cfg.n_embd} values)",
        "",
        f"`wte.weight[id]`, the token's row, and what step 2 adds for its position (`{cfg.pos_encoding}`; zero for RoPE, "
        "which turns q and k instead); their sum is the input to block 0:",
        "",
        "```text",
        f"pos  {'piece'.ljust(14)} {'wte[id]'.ljust(9 * SHOW)}   + wpe[pos]",
        *[f"{i:3d}  {labels[i][:14].ljust(14)} {row(wte[i, :SHOW])}   + {row(wpe[i, :SHOW])}" for i in range(len(ids))],
        "```",
        "",
    ]
    scores, masked, weights = head_scores(model, ids)
    from_model = torch.as_tensor(exp.attention[0, 0], dtype=torch.float64)  # explain: the model's own pass
    if not torch.allclose(weights, from_model, atol=1e-6):
        raise AssertionError("the written-out softmax differs from the model's attention weights")
    out += [
        "## 3. Attention in layer 0, head 0",
        "",
        f"Scores q·k / √{cfg.head_dim} (row: the query's position, column: the key's):",
        "",
        "```text",
        matrix(scores, labels),
        "```",
        "",
        "After the causal mask (a key after the query gets −∞):",
        "",
        "```text",
        matrix(masked, labels),
        "```",
        "",
        "After the softmax (each row sums to 1; equal to the weights `model.hidden(idx, attn_probs=[])` returns):",
        "",
        "```text",
        matrix(weights, labels),
        "```",
        "",
    ]
    last = exp.positions[-1]
    out += [
        f"## 4. The next token after {labels[-1]}",
        "",
        "softmax(logits) at the last position, the 5 most likely tokens:",
        "",
        "```text",
        "rank   id  piece            probability",
        *[f"{r:4d}  {c.id:3d}  {piece(c)[:16].ljust(16)} {c.prob:.4f}" for r, c in enumerate(last.top, 1)],
        "```",
        "",
    ]
    out += kv_cache_steps(model, ids, tok)
    return "\n".join(out)


def kv_cache_steps(model: GPT, ids: list[int], tok: Tokenizer) -> list[str]:
    """Prefill, then DECODE_STEPS greedy decode steps through the engine, with the cache's shape after each."""
    engine = Engine(model, dtype=torch.float64, kernels="linear")
    cache, logits = engine.prefill([ids])  # logits (1, V) of the last position
    alloc = tuple(cache.k.shape)
    lines = [
        f"## 5. The KV cache over {DECODE_STEPS} decode steps",
        "",
        f"`Engine.prefill` allocates `cache.k` and `cache.v` of shape {alloc} "
        "(n_layer, batch, n_head, max_len, head_dim) and fills the prompt's slots; each `Engine.decode` feeds one "
        "(greedy) token and fills one more slot. The keys attention reads are `cache.k[:, :, :, :cache.pos]`:",
        "",
        "```text",
        f"{'step'.ljust(10)}{'fed'.ljust(22)}cache.pos  keys held",
        f"{'prefill'.ljust(10)}{(str(len(ids)) + ' prompt tokens').ljust(22)}{cache.pos:9d}  "
        f"{tuple(cache.k[:, :, :, : cache.pos].shape)}",
    ]
    seq = list(ids)
    for step in range(1, DECODE_STEPS + 1):
        nxt = greedy(logits)  # (1,)
        seq.append(int(nxt))
        logits = engine.decode(cache, nxt, None)
        with torch.no_grad():
            full = model(torch.tensor([seq]))[0][0, -1].float()  # the same tokens, no cache
        if not torch.allclose(logits[0], full, atol=1e-5):
            raise AssertionError("a cached decode step differs from the full forward pass")
        fed = f"{int(nxt)} {tok.decode([int(nxt)])!r}"
        lines.append(
            f"{f'decode {step}'.ljust(10)}{fed[:21].ljust(22)}{cache.pos:9d}  {tuple(cache.k[:, :, :, : cache.pos].shape)}"
        )
    lines += [
        "```",
        "",
        "Each decode step's logits equal those of a full forward pass over the same tokens (checked to 1e-5).",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a pocketgpt checkpoint or run folder (default: train a tiny model here)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None, help="start with <|endoftext|>")
    ap.add_argument("--out", type=Path, help="write the markdown here (default: stdout)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            path, about = args.checkpoint, f"the checkpoint `{Path(args.checkpoint).name}`"
        else:  # the tiny model goes through a checkpoint on disk too, like any trained model
            model, tok, about = tiny_model()
            path = save_checkpoint(Path(tmp), "ckpt-tiny", model.float(), tok)
            about += ", saved as a checkpoint and loaded back"
        ckpt = load_checkpoint(path)
        bos = prompt_bos(ckpt) if args.bos is None else args.bos
        text = trace(ckpt.model, ckpt.tokenizer, args.prompt, bos, about)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
