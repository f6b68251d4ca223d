"""What a model computes for one text, as plain numbers: its tokens, each position's next-token probabilities, and
every layer's attention weights. Numbers only: plot.py draws them, cli/explain.py prints them.

    explain_tokens(model, tokenizer, ids, top_k=5, layers=None, heads=None) -> Explanation
    explain_prompt(ckpt, prompt, bos=None, top_k=5, layers=None, heads=None) -> Explanation  (framed as generate does)
    token_report(model, tokenizer, ids, top_k=5, n_attended=3) -> dict  (JSON-sized, no matrices: for the chat page)
    write_explanation(exp, out) -> paths  (explain.json, attention-layer-<l>.png, next-token.png: one atomic folder)

The numbers are the math, from one forward pass of the model itself (eval mode, no dropout):
- attention weights: softmax(Q K^T / sqrt(d_k) + mask) as model/attention.py's written-out path computes it when
  asked (`GPT.hidden(idx, attn_probs=[])`, the same pass that gives the logits). weights[l][h][i][j] is how much
  position i, in head h of layer l, attends to position j: each row sums to 1, every weight above the diagonal is 0.
- probabilities: softmax(logits) over the model's whole output (float64), per position: `top`, the k most likely
  next tokens, and `next`, what the model gave the token that actually came next, with its rank (1 = first choice).
Every model kind works: learned / sinusoidal / RoPE positions, LoRA adapters (unmerged), converted GPT-2, int8. It
computes in the model's dtype (a loaded checkpoint's is float32; int8 weights then dequantize exactly).
What does not live here: argv and printing (cli/explain.py), drawing (plot.py), the HTTP route (serve/).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pocketgpt.checkpoint import Checkpoint, prompt_bos
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_dir
from pocketgpt.model import GPT
from pocketgpt.model.classifier import GPTClassifier
from pocketgpt.model.lora import lora_modules
from pocketgpt.model.quant import is_quantized
from pocketgpt.plot import plot_attention, plot_next_token
from pocketgpt.tokenizer import Tokenizer

FORMAT = "pocketgpt-explain"
VERSION = 1
JSON_NAME = "explain.json"
DECIMALS = 8  # attention weights in explain.json are rounded to this many decimals (probabilities are not)


@dataclass
class Token:
    id: int
    text: str  # the piece: its bytes as UTF-8 (part of a character shows as U+FFFD), or a special token's name
    bytes: bytes  # b"" for a special token (it stands for no text)
    special: bool = False

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "bytes": list(self.bytes), "special": self.special}


@dataclass
class Candidate(Token):
    prob: float = 0.0  # softmax(logits)[id] at that position

    def to_dict(self) -> dict:
        return {**super().to_dict(), "prob": self.prob}


def candidate(tokenizer: Tokenizer, i: int, prob: float) -> Candidate:
    t = token_of(tokenizer, i)
    return Candidate(t.id, t.text, t.bytes, t.special, prob)


@dataclass
class Position:
    pos: int
    top: list[Candidate]  # the top_k most likely next tokens, most likely first
    next: Candidate | None = None  # the token that came next and its probability; None at the last position
    next_rank: int | None = None  # 1 = the model's first choice

    def to_dict(self) -> dict:
        nxt = None if self.next is None else {**self.next.to_dict(), "rank": self.next_rank}
        return {"pos": self.pos, "top": [c.to_dict() for c in self.top], "next": nxt}


@dataclass
class Explanation:
    tokens: list[Token]
    positions: list[Position]
    layers: list[int]  # the layers kept in `attention`
    heads: list[int]  # the heads kept in `attention`
    attention: np.ndarray  # (len(layers), len(heads), T, T) float32: [l, h, i, j] = query i's weight on key j
    head_mean: np.ndarray  # (len(layers), T, T): the mean over ALL the layer's heads
    top_k: int
    model: dict = field(default_factory=dict)  # n_layer, n_head, pos_encoding, ... lora, int8
    source: dict = field(default_factory=dict)  # checkpoint, prompt, bos (explain_prompt fills it)

    def to_dict(self) -> dict:
        """Everything as JSON types: what explain.json holds."""
        return {
            "format": FORMAT,
            "version": VERSION,
            **self.source,
            "model": self.model,
            "top_k": self.top_k,
            "tokens": [{"pos": i, **t.to_dict()} for i, t in enumerate(self.tokens)],
            "positions": [p.to_dict() for p in self.positions],
            "attention": {
                "layers": self.layers,
                "heads": self.heads,
                "about": "weights[layer][head][i][j]: how much position i attends to position j (each row sums "
                f"to 1, 0 above the diagonal; rounded to {DECIMALS} decimals); head_mean[layer]: the mean over "
                "all the layer's heads",
                "weights": _rounded(self.attention),
                "head_mean": _rounded(self.head_mean),
            },
        }


def _rounded(a: np.ndarray) -> list:
    return np.round(a.astype(np.float64), DECIMALS).tolist()


def token_of(tokenizer: Tokenizer, i: int) -> Token:
    """Token `i` as a piece of text and its bytes (ids past the tokenizer, in a padded vocabulary, have neither)."""
    if not 0 <= i < tokenizer.n_vocab:
        return Token(i, f"<id {i}: no token>", b"", special=True)
    raw = tokenizer.decode_bytes([i])
    if i in tokenizer.special_tokens.values():
        return Token(i, raw.decode("utf-8"), b"", special=True)
    return Token(i, raw.decode("utf-8", errors="replace"), raw)


def pick(given: Sequence[int] | None, n: int, what: str) -> list[int]:
    """Layer or head numbers (negative ones count from the end) checked against n; None: all of them."""
    if given is None:
        return list(range(n))
    out: list[int] = []
    for x in given:
        if not isinstance(x, int) or isinstance(x, bool) or not -n <= x < n:
            raise UserError(f"there is no {what} {x!r}: the model has {n} {what}s, 0..{n - 1}")
        if x % n not in out:
            out.append(x % n)
    if not out:
        raise UserError(f"no {what} chosen: give {what} numbers 0..{n - 1}, or none for all")
    return out


def check_top_k(top_k) -> int:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise UserError(f"top_k must be an integer >= 1, got {top_k!r}")
    return top_k


class _LastOnly(list):
    """An `attn_probs` list that keeps only the latest layer's weights (one layer's n_head x T x T in memory)."""

    def append(self, w: torch.Tensor) -> None:
        self[:] = [w]


@torch.no_grad()
def forward_with_attention(
    model: GPT, ids: Sequence[int], last_layer_only: bool = False
) -> tuple[torch.Tensor, np.ndarray]:
    """One forward pass of `ids` in eval mode: the logits (T, V) and every layer's attention weights,
    (n_layer, n_head, T, T) float32, from the written-out formula; (1, n_head, T, T), the last layer's, with
    `last_layer_only`."""
    if isinstance(model, GPTClassifier):
        raise UserError("this checkpoint is a classifier: explain shows the next-token predictions of a language model")
    ids = [int(i) for i in ids]
    T, limit = len(ids), model.config.block_size
    if T == 0:
        raise UserError("nothing to explain: the prompt has no tokens")
    if T > limit:
        raise UserError(f"the prompt is {T} tokens; the model reads at most {limit} (its context): shorten it")
    bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
    if bad:
        raise UserError(f"token id {bad[0]} is outside the model's vocabulary (0..{model.config.vocab_size - 1})")
    device = next(model.parameters()).device
    training = model.training
    weights: list[torch.Tensor] = _LastOnly() if last_layer_only else []
    model.eval()
    try:
        h = model.hidden(torch.tensor([ids], dtype=torch.long, device=device), attn_probs=weights)  # (1, T, C)
        logits = model.lm_head(h)[0]  # (T, V)
    finally:
        model.train(training)
    attention = torch.stack([w[0] for w in weights]).float().cpu().numpy()  # (n_layer, n_head, T, T)
    return logits, attention


def _positions(tokenizer: Tokenizer, ids: list[int], logits: torch.Tensor, top_k: int) -> list[Position]:
    """Per position: softmax(logits) in float64, its top_k, and the probability and rank of the token that came
    next (rows a few at a time: a (T, V) float64 matrix of GPT-2 would take 400 MB)."""
    k = min(check_top_k(top_k), logits.shape[-1])
    out = []
    for start in range(0, len(ids), 64):
        probs = logits[start : start + 64].double().softmax(dim=-1).cpu()  # (rows, V): each row sums to 1
        top_p, top_i = probs.topk(k, dim=-1)  # (rows, k) each
        for r in range(probs.shape[0]):
            t = start + r
            pos = Position(t, [candidate(tokenizer, int(i), float(q)) for q, i in zip(top_p[r], top_i[r])])
            if t + 1 < len(ids):
                nxt = ids[t + 1]
                p = probs[r, nxt]
                pos.next = candidate(tokenizer, nxt, float(p))
                pos.next_rank = int((probs[r] > p).sum()) + 1
            out.append(pos)
    return out


def describe_model(model: GPT) -> dict:
    cfg = model.config
    return {
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "block_size": cfg.block_size,
        "vocab_size": cfg.vocab_size,
        "pos_encoding": cfg.pos_encoding,
        "activation": cfg.activation,
        "lora": bool(lora_modules(model)),
        "int8": is_quantized(model),
    }


def explain_tokens(
    model: GPT,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    *,
    top_k: int = 5,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Explanation:
    """The tokens `ids`, the top_k next-token probabilities after each (and what the model gave the token that came
    next), and the attention weights of the chosen layers and heads (default: all)."""
    cfg = model.config
    layers, heads = pick(layers, cfg.n_layer, "layer"), pick(heads, cfg.n_head, "head")
    ids = [int(i) for i in ids]
    check_top_k(top_k)
    logits, attention = forward_with_attention(model, ids)
    return Explanation(
        tokens=[token_of(tokenizer, i) for i in ids],
        positions=_positions(tokenizer, ids, logits, top_k),
        layers=layers,
        heads=heads,
        attention=attention[layers][:, heads],
        head_mean=attention[layers].mean(axis=1),
        top_k=top_k,
        model=describe_model(model),
    )


def prompt_ids(ckpt: Checkpoint, prompt: str, bos: bool | None = None) -> list[int]:
    """[<|endoftext|>, if bos] + the prompt's ids, as `pocketgpt generate` frames a prompt (bos None: what the
    checkpoint records, checkpoint.prompt_bos). An empty prompt is an error: there is nothing to explain."""
    if not prompt:
        raise UserError("the prompt is empty: give --prompt TEXT to explain")
    bos = prompt_bos(ckpt) if bos is None else bos
    return ([ckpt.tokenizer.eot_id] if bos else []) + ckpt.tokenizer.encode(prompt)


def explain_prompt(
    ckpt: Checkpoint,
    prompt: str,
    *,
    bos: bool | None = None,
    top_k: int = 5,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Explanation:
    """`explain_tokens` of a prompt framed as generate frames it (see prompt_ids), with where it came from."""
    bos = prompt_bos(ckpt) if bos is None else bos
    exp = explain_tokens(
        ckpt.model, ckpt.tokenizer, prompt_ids(ckpt, prompt, bos), top_k=top_k, layers=layers, heads=heads
    )
    shown = prompt.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # JSON-safe
    exp.source = {"checkpoint": str(ckpt.path), "prompt": shown, "bos": bos}
    return exp


def token_report(model: GPT, tokenizer: Tokenizer, ids: Sequence[int], top_k: int = 5, n_attended: int = 3) -> dict:
    """JSON-ready and small (no matrices), for a page that shows what the model thought at each token:
    {"tokens": [{id, text, bytes, special, label}], "positions": [{pos, top: [{id, text, bytes, special, prob}],
    next: {..., prob, rank} | null, attends: [{pos, label, weight}]}], "attends": how `attends` was computed}.
    `label` is the piece quoted and escaped for display (see `label`).

    `attends` lists the n_attended positions (earlier ones, or itself) that position i attends to most, by the
    weights of the LAST layer averaged over its heads: the layer right below the output head. (Lower layers mix
    positions that later layers mix again, so their weights say less about the prediction.)"""
    ids = [int(i) for i in ids]
    check_top_k(top_k)
    if not isinstance(n_attended, int) or n_attended < 0:
        raise UserError(f"n_attended must be an integer >= 0, got {n_attended!r}")
    logits, attention = forward_with_attention(model, ids, last_layer_only=True)
    last = attention[-1].mean(axis=0)  # (T, T): the last layer, mean over heads
    positions = []
    for p in _positions(tokenizer, ids, logits, top_k):
        row = last[p.pos, : p.pos + 1]  # (pos + 1,): the causal part, sums to 1
        order = np.argsort(-row, kind="stable")[:n_attended]
        entry = p.to_dict()
        entry["attends"] = [
            {"pos": int(j), "label": label(token_of(tokenizer, ids[j]), 16), "weight": float(row[j])} for j in order
        ]
        positions.append(entry)
    return {
        "tokens": [{**t.to_dict(), "label": label(t, 16)} for t in (token_of(tokenizer, i) for i in ids)],
        "positions": positions,
        "attends": f"last layer (of {model.config.n_layer}), mean over its {model.config.n_head} heads",
    }


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}


def _shown(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that is not part of a whole UTF-8 character (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if c in _ESCAPES:
        return _ESCAPES[c]
    if not c.isprintable():
        return f"\\x{o:02x}" if o < 0x80 else f"\\u{o:04x}"
    return c


def label(token: Token, width: int = 12) -> str:
    """A short printable label: a special token's name, else the piece in quotes (so spaces show), with \\n, \\t,
    \\", \\uNNNN for invisible characters and \\xNN for bytes that are not a whole UTF-8 character (byte-level BPE
    splits some), cut to `width` characters."""
    if token.special:
        s = token.text
    else:
        s = "".join(_shown(c) for c in token.bytes.decode("utf-8", errors="surrogateescape"))
        width -= 2
    s = s if len(s) <= width else s[: width - 1] + "…"
    return s if token.special else f'"{s}"'


def check_out(out: Path | str) -> Path:
    """`out` as a folder explain may write: new, empty, or an earlier explain folder (UserError otherwise)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / JSON_NAME).is_file())):
        raise UserError(f"{out} exists and is not an earlier explain folder: choose another --out")
    return out


def write_explanation(exp: Explanation, out: Path | str) -> list[Path]:
    """explain.json, attention-layer-<l>.png per chosen layer (its heads as small multiples and their mean) and
    next-token.png into the folder `out`, all at once (fileio.atomic_dir: a failure leaves no half-written folder).
    An earlier explain folder at `out` is replaced; any other non-empty folder is refused."""
    out = check_out(out)
    names = [JSON_NAME] + [f"attention-layer-{layer}.png" for layer in exp.layers] + ["next-token.png"]
    shown = [label(t) for t in exp.tokens]
    n_head = exp.model.get("n_head", len(exp.heads))
    with atomic_dir(out, if_exists="replace") as tmp:
        (tmp / JSON_NAME).write_text(json.dumps(exp.to_dict(), ensure_ascii=False), encoding="utf-8")
        for li, layer in enumerate(exp.layers):
            plot_attention(
                exp.attention[li],
                exp.head_mean[li],
                shown,
                heads=exp.heads,
                title=f"layer {layer}: attention weights (row: query position, column: key position)",
                mean_title=f"mean of all {n_head} heads",
                out=tmp / f"attention-layer-{layer}.png",
            )
        last = exp.positions[-1]
        plot_next_token(
            shown,
            [p.next.prob for p in exp.positions[:-1]],
            [p.top[0].prob for p in exp.positions[:-1]],
            [(label(c, width=16), c.prob) for c in last.top],
            after=shown[-1],
            out=tmp / "next-token.png",
        )
    return [out / n for n in names]
