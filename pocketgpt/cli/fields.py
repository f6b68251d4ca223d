"""Flags from config dataclasses for commands that take a few fields rather than a whole nested config.

Each field becomes `--name` (and `--name-with-dashes` when asked) with its type, default and the one-line
doc written under it in pocketgpt.config, so help text is never written twice.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import typing
from typing import Literal

from jsonargparse import ArgumentParser

from pocketgpt.config import from_dict


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (or of the dataclasses it extends), keyed by field name."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base) and base is not cls:
            docs.update(field_docs(base))
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(getattr(nxt, "value", None), ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def add_dataclass_flags(
    parser: ArgumentParser, cls: type, *, skip: set[str] = frozenset(), dashes: bool = False, prefix: str = ""
) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        names = [f"--{prefix}{f.name}"]
        if dashes and "_" in f.name:
            names.insert(0, f"--{prefix}{f.name.replace('_', '-')}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument(
            *names, dest=f"{prefix}{f.name}", type=hints[f.name], default=default, help=docs.get(f.name, "")
        )


def dataclass_from(ns, cls: type, prefix: str = ""):
    """Build `cls` from the flags add_dataclass_flags added (checks in __post_init__ run here)."""
    return cls(
        **{
            f.name: getattr(ns, f"{prefix}{f.name}")
            for f in dataclasses.fields(cls)
            if hasattr(ns, f"{prefix}{f.name}")
        }
    )


def run_from_namespace(ns, cls: type):
    """The TrainRun / FinetuneRun dataclass from parsed flags (checks in __post_init__ run here)."""
    d = ns.as_dict()
    for k in ("preset", "config", "resume", "command", "checkpoint", "__path__"):
        d.pop(k, None)
    return from_dict(
        cls,
        {k: ({kk: vv for kk, vv in v.items() if kk != "__path__"} if isinstance(v, dict) else v) for k, v in d.items()},
    )


def add_bos_flag(p: ArgumentParser) -> None:
    from jsonargparse import ActionYesNo

    p.add_argument(
        "--bos",
        action=ActionYesNo(no_prefix="no-"),
        default=None,
        help="--bos / --no-bos: start the prompt with <|endoftext|> or not; default: what the checkpoint records "
        "(yes for models pocketgpt trained, no for checkpoints converted from Hugging Face)",
    )


def resolve_bos(ns, ckpt) -> bool:
    from pocketgpt.checkpoint import prompt_bos

    return prompt_bos(ckpt) if getattr(ns, "bos", None) is None else bool(ns.bos)


def add_kernel_flags(p: ArgumentParser) -> None:
    p.add_argument(
        "--kernels",
        type=Literal["auto", "linear", "mv", "split", "t", "packed"],
        default="auto",
        help="batch-1 matmul kernel per weight shape: auto = the fastest measured on this machine (cached), or "
        "linear / mv / split / t / packed everywhere",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the device, the kernels chosen with timings, and speculative decoding's stats",
    )


def add_quantize_flag(p: ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        type=Literal["none", "int8"],
        default="none",
        help="int8: quantize the weights to int8 on load (no quality check; `pocketgpt quantize` checks and saves)",
    )
