"""`pocketgpt <command>`: parse, call one library function, format. No math lives here.

Config flows as defaults < --preset < --config FILE.yaml < dotted flags (--model.n_layer 6); the parser is
built from the dataclasses in pocketgpt.config (jsonargparse), so unknown keys and wrong types are errors
naming the key. Bad input prints one line `pocketgpt: error: ...` and exits 2, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

import jsonargparse

from pocketgpt.cli.parser import build_parser
from pocketgpt.errors import UserError


def _one_line(msg: str) -> str:
    lines = [ln.strip() for ln in str(msg).strip().splitlines() if ln.strip()]
    text = " ".join(lines[:3]) if lines else "invalid arguments"
    return re.sub(r'Parser key "([\w.]+)":', r"--\1:", text)  # name the flag the user typed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = warnings.formatwarning
    warnings.formatwarning = lambda m, c, *a, **k: f"warning: {m}\n"
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _prefix() -> str:
    """`pocketgpt: ` alone, or `pocketgpt (rank R): ` in a process torchrun started with more than one."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    return f"pocketgpt (rank {rank})" if rank is not None and world.isdigit() and int(world) > 1 else "pocketgpt"


def _main(argv: list[str]) -> int:
    try:
        parser = build_parser(argv)
        if not argv:
            parser.print_help()
            return 2
        ns = parser.parse_args(argv)
    except jsonargparse.ArgumentError as e:
        print(f"pocketgpt: error: {_one_line(str(e))} (see --help)", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"pocketgpt: error: {e}", file=sys.stderr)
        return 2
    from pocketgpt.cli import commands

    try:
        return commands.dispatch(ns) or 0
    except UserError as e:
        print(f"{_prefix()}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not (isinstance(e, torch_distributed_errors()) or (_prefix() != "pocketgpt" and _is_peer_failure(e))):
            raise
        # a peer died or timed out: one line naming this rank, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        print(f"{_prefix()}: error: a collective with the other processes failed ({first[:300]})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def torch_distributed_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a collective raises when another rank failed or timed out (only under torchrun)."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return ()
    import torch.distributed as dist

    return tuple(t for t in (getattr(dist, "DistError", None), _PeerFailure) if t)


class _PeerFailure(Exception):
    """Stands for gloo's plain RuntimeError when a peer's connection closes or a collective times out."""


def _is_peer_failure(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "gloo")
    )


if __name__ == "__main__":
    sys.exit(main())
