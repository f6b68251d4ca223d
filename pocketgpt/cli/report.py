"""What `-v` prints about how a model runs: the kernels the engine chose and the timings that decided them, and
what speculative decoding drafted and kept."""

from __future__ import annotations

import sys

from pocketgpt.generate.kernels import describe


def print_kernels(engine, file=sys.stderr) -> None:
    choices = engine.kernels
    where = "measured on this machine" if any(c.us for c in choices.values()) else "forced or the only candidate"
    print(f"kernels ({len(choices)} weight shapes, {where}; cache: POCKETGPT_CACHE or ~/.cache/pocketgpt):", file=file)
    for line in describe(choices):
        print(line, file=file)


def print_speculation(stats, file=sys.stderr) -> None:
    """One line: what speculative decoding drafted, how much the model accepted, tokens per model pass."""
    per = stats.tokens / stats.forwards if stats.forwards else 0.0
    print(
        f"speculative ({stats.mode}): {stats.drafted} tokens drafted, {stats.accepted} accepted "
        f"(acceptance {stats.acceptance:.1%}); {stats.tokens} tokens in {stats.forwards} model passes "
        f"({per:.2f} per pass)",
        file=file,
    )
