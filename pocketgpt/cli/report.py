"""What `-v` prints about how a model runs: the kernels the engine chose and the timings that decided them."""

from __future__ import annotations

import sys

from pocketgpt.generate.kernels import describe


def print_kernels(engine, file=sys.stderr) -> None:
    choices = engine.kernels
    where = "measured on this machine" if any(c.us for c in choices.values()) else "forced or the only candidate"
    print(f"kernels ({len(choices)} weight shapes, {where}; cache: POCKETGPT_CACHE or ~/.cache/pocketgpt):", file=file)
    for line in describe(choices):
        print(line, file=file)
