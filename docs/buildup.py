"""Build a GPT one idea at a time and measure each step: the table of Karpathy's "Let's build GPT", from pocketgpt.

    nice -n 5 .venv/bin/python docs/buildup.py --data ../shared/data/tinyshakespeare.txt

Tokens are bytes (256 ids; tiny Shakespeare is ASCII, so one byte is one character), and every row trains with the
same steps, batch, learning rate, seed and batches. Printed: validation bits per byte after each addition

    bigram -> + self-attention (one head) -> + positions -> + multi-head -> + MLP -> + residuals and layer norm
    -> + more blocks, and the last model once more without the causal mask.

Each row is measured three ways: teacher-forced on training text, teacher-forced on validation text (how training
reports loss), and "past only": position t gets only tokens 0..t as input, which is all a model has when it
generates. A causal model scores the same both ways; a model trained without the mask does not (docs/build-up.md).

Where pocketgpt's own pieces fit, they are used: `CausalSelfAttention`, `MLP`, the `POSITIONAL` registry,
`ModelConfig`, `GPT`, `matmul_attention`, `evaluate_tokens`, `sampling.sample`. What pocketgpt's GPT cannot express
(no residuals, no layer norm, one head without an output projection, attention without the mask) is written here,
small and labelled. This script is a document, not part of the package: tests/test_buildup.py runs it at toy size.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # ../shared/PITFALLS.md: spin-waiting threads suffer under load

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.device import describe_cpu, set_threads
from pocketgpt.evaluate import evaluate_tokens
from pocketgpt.generate.sampling import sample
from pocketgpt.model.gpt import GPT, MLP, CausalSelfAttention, matmul_attention
from pocketgpt.model.positional import POSITIONAL

VOCAB = 256  # byte-level tokens: bits per token = bits per byte


@dataclass
class Settings:
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 4  # the "more blocks" rows; "+ residuals and layer norm" has one block
    block_size: int = 64
    batch_size: int = 32
    steps: int = 800
    lr: float = 2e-3
    seed: int = 1337
    val_fraction: float = 0.1  # the last 10% of the text, as nanoGPT splits tiny Shakespeare
    eval_tokens: int = 0  # teacher-forced evaluation on this many tokens per split; 0 = the whole validation split
    past_windows: int = 32  # windows for the "past only" measurement (block_size forward passes each)
    sample_chars: int = 200  # generated text shown for the last two rows

    def model_config(self, n_layer: int = 1) -> ModelConfig:
        return ModelConfig(
            n_layer=n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            block_size=self.block_size,
            vocab_size=VOCAB,
            tie_embeddings=False,  # every row has its own wte and lm_head, as the bigram does
        )


# ---- the pieces pocketgpt's GPT cannot express -------------------------------------------------------------------


class OneHead(nn.Module):
    """One causal head, head size = n_embd, no output projection (Karpathy's `Head`): pocketgpt's attention always
    has several heads' worth of c_attn and a c_proj. The formula is pocketgpt's `matmul_attention`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(cfg.n_embd, cfg.n_embd, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x)[:, None], self.key(x)[:, None], self.value(x)[:, None]  # (B, 1, T, C)
        return matmul_attention(q, k, v)[:, 0]  # softmax(q k^T / sqrt(C) + causal mask) v: (B, T, C)


class MultiHead(CausalSelfAttention):
    """pocketgpt's causal multi-head attention (c_attn, heads, c_proj), called without rotary angles."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x, None)


class Stack(nn.Module):
    """wte (+ learned positions) -> layers applied one after another, no residual, no norm -> lm_head.

    Rows 1-5 of the table. Same interface as GPT (`.config`, forward -> (logits, loss)), so one loop trains all.
    """

    def __init__(self, cfg: ModelConfig, layers: list[nn.Module], positions: bool):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = POSITIONAL["learned"](cfg) if positions else None
        self.layers = nn.ModuleList(layers)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(_init)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = self.wpe.add_to_input(x, torch.arange(idx.size(1), device=idx.device))  # + position table
        for layer in self.layers:
            x = layer(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        return logits, loss


def _init(m: nn.Module) -> None:
    """GPT's initialisation (normal, std 0.02; zero biases), so rows differ in structure, not in init."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


class Unmasked(CausalSelfAttention):
    """pocketgpt's attention with ONE change: no causal mask, so position t also reads tokens t+1, t+2, ...
    including the very token it is trained to predict."""

    def forward(self, x: torch.Tensor, *unused, **unused_kw) -> torch.Tensor:  # no rotary, no cache: learned positions
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # the one change: is_causal=True -> False
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def unmask(model: GPT) -> GPT:
    for block in model.transformer.h:
        block.attn.__class__ = Unmasked  # same weights, same init: only the forward's mask differs
    return model


# ---- the rows -----------------------------------------------------------------------------------------------------

ROWS = (
    ("bigram", "each byte's logits depend on that byte alone: wte -> lm_head"),
    ("+ self-attention (one head)", "one causal head (head size n_embd, no projection) between wte and lm_head"),
    ("+ positions", "a learned position table added to the token embeddings, before attention"),
    ("+ multi-head", "pocketgpt's CausalSelfAttention: n_head heads side by side, then c_proj"),
    ("+ MLP", "pocketgpt's MLP (Linear -> GELU -> Linear) after attention; still no residual, no norm"),
    ("+ residuals and layer norm", "pocketgpt's GPT with 1 Block: x + attn(ln_1(x)), x + mlp(ln_2(x)), ln_f"),
    ("+ more blocks", "pocketgpt's GPT with n_layer Blocks"),
    ("without the causal mask", "the same GPT, attention allowed to read the future"),
)


def build(row: int, s: Settings) -> nn.Module:
    cfg = s.model_config()
    if row == 0:
        return Stack(cfg, [], positions=False)
    if row == 1:
        return Stack(cfg, [OneHead(cfg)], positions=False)
    if row == 2:
        return Stack(cfg, [OneHead(cfg)], positions=True)
    if row == 3:
        return Stack(cfg, [MultiHead(cfg, 0)], positions=True)
    if row == 4:
        return Stack(cfg, [MultiHead(cfg, 0), MLP(cfg)], positions=True)
    if row == 5:
        return GPT(cfg)
    if row == 6:
        return GPT(s.model_config(s.n_layer))
    return unmask(GPT(s.model_config(s.n_layer)))


@dataclass
class Row:
    name: str
    added: str
    params: int
    train_bpb: float
    val_bpb: float
    past_bpb: float  # validation, each position given only the tokens before it (as when generating)
    seconds: float
    sample: str = ""


def train(model: nn.Module, data: np.ndarray, s: Settings) -> None:
    """AdamW at a constant lr on random windows; the batches depend only on the seed, so every row sees the same."""
    g = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr)
    tokens = torch.from_numpy(data.astype(np.int64))
    model.train()
    for _ in range(s.steps):
        starts = torch.randint(len(tokens) - s.block_size - 1, (s.batch_size,), generator=g)
        buf = torch.stack([tokens[i : i + s.block_size + 1] for i in starts.tolist()])  # (B, T + 1)
        _, loss = model(buf[:, :-1], buf[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bpb(model: nn.Module, data: np.ndarray, s: Settings) -> float:
    """Teacher-forced bits per byte over non-overlapping windows (pocketgpt.evaluate, as `pocketgpt eval` does)."""
    return evaluate_tokens(model, data, np.ones(VOCAB), batch_size=64, max_tokens=s.eval_tokens)["bpb"]


@torch.no_grad()
def past_only_bpb(model: nn.Module, data: np.ndarray, s: Settings) -> float:
    """Bits per byte when position t is given tokens 0..t only: the prediction for token t+1 is the last logit of a
    forward pass over the prefix. What a model can do at generation time, when the future does not exist yet."""
    model.eval()
    T = s.block_size
    starts = np.linspace(0, len(data) - T - 2, s.past_windows).astype(np.int64)
    buf = torch.from_numpy(np.stack([data[i : i + T + 1] for i in starts]).astype(np.int64))  # (W, T + 1)
    total = 0.0
    for t in range(T):
        logits, _ = model(buf[:, : t + 1])  # (W, t + 1, V)
        total += F.cross_entropy(logits[:, -1], buf[:, t + 1], reduction="sum").item()
    return total / (len(starts) * T * math.log(2))


@torch.no_grad()
def generate(model: nn.Module, prompt: bytes, n: int, s: Settings) -> str:
    """n sampled bytes (temperature 1, seeded), no KV cache: every step re-reads the last block_size bytes."""
    model.eval()
    g = torch.Generator().manual_seed(s.seed)
    ids = torch.tensor([list(prompt)])
    for _ in range(n):
        logits, _ = model(ids[:, -s.block_size :])
        ids = torch.cat([ids, sample(logits[:, -1], g)[:, None]], dim=1)
    return bytes(ids[0].tolist()).decode("utf-8", errors="replace")


def buildup(text: bytes, s: Settings, progress=None) -> list[Row]:
    """Train and measure every row of ROWS on `text` (bytes); returns the rows in order."""
    data = np.frombuffer(text, dtype=np.uint8)
    n_val = int(len(data) * s.val_fraction)
    train_data, val_data = data[:-n_val], data[-n_val:]
    train_eval = train_data[: len(val_data)] if s.eval_tokens <= 0 else train_data
    rows = []
    for i, (name, added) in enumerate(ROWS):
        t0 = time.perf_counter()
        torch.manual_seed(s.seed)
        model = build(i, s)
        train(model, train_data, s)
        row = Row(
            name=name,
            added=added,
            params=sum(p.numel() for p in model.parameters()),
            train_bpb=bpb(model, train_eval, s),
            val_bpb=bpb(model, val_data, s),
            past_bpb=past_only_bpb(model, val_data, s),
            seconds=0.0,
        )
        if i >= len(ROWS) - 2 and s.sample_chars > 0:
            row.sample = generate(model, b"\n", s.sample_chars, s)
        row.seconds = time.perf_counter() - t0
        rows.append(row)
        if progress:
            progress(row)
    return rows


def markdown(rows: list[Row], s: Settings, command: str = "") -> str:
    cfg = ", ".join(f"{k}={v}" for k, v in asdict(s).items())
    out = [
        f"CPU: {describe_cpu()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{datetime.date.today().isoformat()}",
        *([f"Command: `{command}`"] if command else []),
        f"Settings: {cfg}",
        "",
        "| row | what is added | parameters | train bpb | val bpb | val bpb, past only | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {r.name} | {r.added} | {r.params:,} | {r.train_bpb:.3f} | {r.val_bpb:.3f} | {r.past_bpb:.3f} "
        f"| {r.seconds:.0f} |"
        for r in rows
    ]
    for r in rows:
        if r.sample:
            out += ["", f"Sampled from `{r.name}` (temperature 1, seed {s.seed}):", "", "```", r.sample.strip(), "```"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a text file, e.g. ../shared/data/tinyshakespeare.txt")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = one per physical core")
    for name, value in asdict(Settings()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args(argv)
    s = replace(Settings(), **{k: getattr(args, k) for k in asdict(Settings())})
    set_threads(args.threads)
    with open(args.data, "rb") as f:
        text = f.read()
    print(f"{len(text):,} bytes from {args.data}; {len(ROWS)} rows of {s.steps} steps", file=sys.stderr)
    rows = buildup(text, s, lambda r: print(f"  {r.name}: val {r.val_bpb:.3f} ({r.seconds:.0f} s)", file=sys.stderr))
    print(markdown(rows, s, "python docs/buildup.py " + " ".join(argv if argv is not None else sys.argv[1:])))


if __name__ == "__main__":
    main()
