"""`pocketgpt explain CHECKPOINT --prompt TEXT`: a prompt's tokens (pieces, ids, bytes) and, after each, the top-k
next-token probabilities and the one the model gave the token that came next; with --out DIR also attention heatmaps,
a probability chart and explain.json. pocketgpt/explain.py computes, plot.py draws; this file parses and prints."""

from __future__ import annotations

import contextlib
import sys
from typing import Optional

from jsonargparse import ArgumentParser

from pocketgpt.cli.fields import add_bos_flag, add_dataclass_flags, dataclass_from, resolve_bos
from pocketgpt.config import RuntimeConfig
from pocketgpt.errors import UserError

DESCRIPTION = (
    "Show what a model computes for a prompt: its tokens (pieces, ids, bytes), the top-k next-token probabilities "
    "after each and the probability it gave the token that actually came next; with --out, attention heatmaps (one "
    "PNG per layer: each head and their mean), a next-token probability chart and explain.json with every number."
)


def explain_parser() -> ArgumentParser:
    p = ArgumentParser(exit_on_error=False, description=DESCRIPTION)
    p.add_argument("checkpoint", help="checkpoint or run folder (any kind: LoRA, converted GPT-2, int8)")
    p.add_argument("--prompt", type=str, default="", help="the text to explain")
    p.add_argument(
        "--out",
        type=Optional[str],
        default=None,
        help="folder for explain.json, attention-layer-<L>.png and next-token.png (replaced if an earlier explain "
        "folder; default: print only)",
    )
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=5, help="next-token candidates per position")
    p.add_argument(
        "--layers",
        type=Optional[str],
        default=None,
        help="layers to draw and store, comma-separated from 0 (-1 = the last), e.g. 0,-1; default: all",
    )
    p.add_argument("--heads", type=Optional[str], default=None, help="heads to draw and store, as --layers")
    add_bos_flag(p)
    add_dataclass_flags(p, RuntimeConfig, skip={"dtype"})  # explains in float32
    return p


def numbers(text: str | None, flag: str) -> list[int] | None:
    """`0,2,-1` -> [0, 2, -1]; None stays None (all)."""
    if text is None:
        return None
    try:
        return [int(x) for x in str(text).replace(" ", ",").split(",") if x]
    except ValueError:
        raise UserError(f"{flag} takes integers separated by commas, e.g. 0,-1; got {text!r}") from None


def run_explain(ns) -> int:
    from pocketgpt.checkpoint import load_checkpoint
    from pocketgpt.device import setup_runtime
    from pocketgpt.explain import check_out, explain_prompt, write_explanation

    if not ns.prompt:
        raise UserError("the prompt is empty: give --prompt TEXT to explain")
    if ns.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {ns.top_k}")
    layers, heads = numbers(ns.layers, "--layers"), numbers(ns.heads, "--heads")
    if ns.out is not None:
        check_out(ns.out)  # before any work
    with contextlib.redirect_stdout(sys.stderr):
        device, _ = setup_runtime(dataclass_from(ns, RuntimeConfig), verbose=False)
    ckpt = load_checkpoint(ns.checkpoint, device=device)
    exp = explain_prompt(ckpt, ns.prompt, bos=resolve_bos(ns, ckpt), top_k=ns.top_k, layers=layers, heads=heads)
    for line in report_lines(exp):
        print(line)
    if ns.out is None:
        print("\n(--out DIR writes the attention heatmaps, a probability chart and explain.json)")
        return 0
    paths = write_explanation(exp, ns.out)
    print(f"\nwrote {len(paths)} files to {paths[0].parent}: " + ", ".join(p.name for p in paths))
    return 0


def report_lines(exp) -> list[str]:
    """The printed report: a header, the token table, the next-token table."""
    from pocketgpt.explain import label

    m = exp.model
    kind = ", ".join(k for k in ("lora", "int8") if m.get(k)) or "float"
    lines = [
        f"{exp.source.get('checkpoint', 'model')}: {m['n_layer']} layers x {m['n_head']} heads, "
        f"{m['pos_encoding']} positions, {kind}; {len(exp.tokens)} tokens"
        + (" (<|endoftext|> first: --no-bos drops it)" if exp.source.get("bos") else ""),
        "",
        f"{'pos':>4}  {'id':>6}  {'piece':<16}  bytes",
    ]
    for i, t in enumerate(exp.tokens):
        raw = "(special)" if t.special else " ".join(f"{b:02x}" for b in t.bytes)
        lines.append(f"{i:>4}  {t.id:>6}  {label(t, 16):<16}  {raw}")
    lines += [
        "",
        f"next-token probabilities (softmax of the logits): p(next) = what the model gave the token that came next; "
        f"top {exp.top_k} = its most likely",
        f"{'pos':>4}  {'after':<16}  {'next':<16}  {'p(next)':>8}  {'rank':>6}  top {exp.top_k}",
    ]
    for p in exp.positions:
        after = label(exp.tokens[p.pos], 16)
        if p.next is None:
            nxt, prob, rank = "-", "-", "-"
        else:
            nxt, prob, rank = label(p.next, 16), f"{p.next.prob:.4g}", str(p.next_rank)
        top = "  ".join(f"{label(c, 12)} {c.prob:.4g}" for c in p.top)
        lines.append(f"{p.pos:>4}  {after:<16}  {nxt:<16}  {prob:>8}  {rank:>6}  {top}")
    return lines
