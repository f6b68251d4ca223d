"""Finding and reading a Hugging Face GPT-2 folder: a local path or a Hub id (downloaded only when the Hub is
reachable, else served from the HF cache), its config.json, and its weights (safetensors, or pytorch_model.bin read
with torch.load(weights_only=True): plain tensors only, never executed). hf_gpt2.py converts what this reads.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pocketgpt.errors import UserError

# ---- finding and reading an HF folder ----------------------------------------------------------

HUB_FILES = ["config.json", "*.safetensors", "vocab.json", "merges.txt", "tokenizer.json"]
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(endpoint: str, timeout: float = 4.0) -> bool:
    """A TCP connect to the Hub within `timeout` (DNS included); True behind a proxy, which we can't probe."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1)
    return bool(result and result[0])


def _download(repo_id: str) -> Path:
    """snapshot_download of the few files we need; the HF cache serves them when offline."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise UserError(
            f"downloading {repo_id!r} needs huggingface_hub (pip install 'pocketgpt[hf]'); or pass a local folder"
        ) from None
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or constants.HF_HUB_OFFLINE
    why = "HF_HUB_OFFLINE is set and it is not in the local cache"
    if not offline and not _hub_reachable(constants.ENDPOINT):
        offline, why = True, f"cannot connect to {constants.ENDPOINT} and it is not in the local cache"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=offline, etag_timeout=5))
    except GatedRepoError:
        raise UserError(
            f"{repo_id!r} is gated on the Hugging Face Hub: accept its terms and log in "
            "(`hf auth login`), or pass a local folder"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise UserError(
            f"{repo_id!r} is neither a local folder nor a model on the Hugging Face Hub "
            "(or it is private: log in with `hf auth login`)"
        ) from None
    except Exception as e:  # LocalEntryNotFoundError: no connection (or offline) and not in the cache
        text = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not offline and not isinstance(e, LocalEntryNotFoundError):
            raise UserError(f"could not download {repo_id!r} from the Hugging Face Hub ({text})") from None
        raise UserError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({why if offline else text}): "
            "this machine seems offline; pass a local folder"
        ) from None


def resolve_source(source: str | Path) -> Path:
    """A local HF folder as given, or a Hub id (`gpt2`, `openai-community/gpt2`) downloaded to the HF cache."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path} is a file; pass the Hugging Face folder that holds config.json")
        return path
    if isinstance(source, str) and _REPO_ID.fullmatch(source) and ".." not in source:
        return _download(source)
    raise UserError(f"{source}: no such folder, and not a Hugging Face Hub id like 'openai-community/gpt2'")


def read_hf_config(folder: Path) -> dict:
    f = folder / "config.json"
    if not f.is_file():
        raise UserError(f"not a Hugging Face GPT-2 checkpoint: {folder} has no config.json")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{f} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{f} must hold a JSON object, got {type(d).__name__}")
    return d


def _load_bin(f: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, only through torch's weights-only unpickler: nothing in it is ever executed."""
    try:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(
            f"refusing {f}: it is not a plain tensor state dict loadable with weights_only=True "
            f"({e.__class__.__name__}: {first}); nothing in it was executed"
        ) from None
    if not isinstance(sd, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise UserError(f"refusing {f}: expected a mapping of tensor names to tensors, got {type(sd).__name__}")
    return dict(sd)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, its shards (model-*-of-*.safetensors), or pytorch_model.bin, in that order."""
    single = folder / "model.safetensors"
    files = [single] if single.is_file() else sorted(folder.glob("model-*-of-*.safetensors"))
    if not files:
        if (folder / "pytorch_model.bin").is_file():
            return _load_bin(folder / "pytorch_model.bin")
        raise UserError(
            f"no weights in {folder}: looked for model.safetensors, model-*-of-*.safetensors and pytorch_model.bin"
        )
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"weights file {f} is truncated or corrupt ({e})") from None
    return sd
