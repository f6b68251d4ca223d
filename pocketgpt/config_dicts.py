"""Config dataclasses <-> plain nested dicts (YAML, JSON, checkpoint metadata, presets, dotted flag names).

`to_dict` / `from_dict` (unknown keys are a UserError naming the key), `deep_merge` (presets and YAML files on
top of one another), `flatten` / `unflatten` (the CLI's dotted names). The dataclasses themselves live in
config.py, which re-exports these.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pocketgpt.errors import UserError


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` on top, nested dicts merged key by key (presets, YAML files, recipe configs)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}: the dotted names the CLI's flags use."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(d: dict) -> dict:
    """{"train.lr": 1e-3} -> {"train": {"lr": 1e-3}}."""
    out: dict = {}
    for key, v in d.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) as plain JSON/YAML-safe data."""
    d = dataclasses.asdict(cfg)
    return _plain(d)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a (nested) config dataclass from plain data; unknown keys are an error naming the key."""
    if not isinstance(d, dict):
        raise UserError(f"expected a mapping for {cls.__name__}, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} for {cls.__name__}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in d.items():
        sub = _dataclass_type(cls, name)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list) and name == "extensions":
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_type(cls: type, name: str) -> type | None:
    """The dataclass a field of `cls` holds (a nested config section), or None."""
    hint = typing.get_type_hints(cls).get(name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None
