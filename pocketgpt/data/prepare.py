"""Corpus -> memory-mapped token shards + meta.json, cached by what went in.

Layout of a prepared folder:
    meta.json        {"fingerprint", "tokenizer", "corpus", "dtype", "splits": {"train"/"val": {tokens, bytes, documents, shards}}}
    train-000.bin    flat token ids (uint16 when the vocabulary fits, else uint32); each document starts with <|endoftext|>
    val-000.bin
The folder's name holds a hash of (corpus fingerprint, tokenizer fingerprint, split settings), so the same input
is a no-op and a changed tokenizer or corpus prepares anew. Writes go to a temp folder renamed into place.
What does not live here: reading files (corpus.py), sampling batches (loader.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketgpt.data.corpus import Document, corpus_fingerprint, iter_documents, split_documents
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_dir
from pocketgpt.tokenizer import Tokenizer

PREPARE_VERSION = 1
SHARD_TOKENS = 1 << 27  # 128M tokens per shard file


@dataclass
class Prepared:
    path: Path
    meta: dict

    def shards(self, split: str) -> list[np.ndarray]:
        dtype = np.dtype(self.meta["dtype"])
        return [np.memmap(self.path / name, dtype=dtype, mode="r") for name in self.meta["splits"][split]["shards"]]

    def tokens(self, split: str) -> np.ndarray:
        parts = self.shards(split)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def n_tokens(self, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"])


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 1 << 16 else np.dtype(np.uint32)


def prepare_key(
    data: str | None,
    tokenizer: Tokenizer,
    *,
    include_source: bool,
    extensions: tuple[str, ...],
    val_fraction: float,
    seed: int = 0,
) -> str:
    parts = [
        f"v{PREPARE_VERSION}",
        corpus_fingerprint(data, include_source=include_source, extensions=extensions),
        tokenizer.fingerprint(),
        f"{val_fraction!r}",
        str(seed),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def encode_documents(docs: Iterable[Document], tokenizer: Tokenizer, batch: int = 256) -> Iterable[np.ndarray]:
    """Each document as [<|endoftext|>, tokens...], encoded in batches (tiktoken threads them)."""
    dtype = token_dtype(tokenizer.n_vocab)
    buf: list[str] = []

    def flush():
        for ids in tokenizer.encode_batch(buf):
            out = np.empty(len(ids) + 1, dtype=dtype)
            out[0] = tokenizer.eot_id
            out[1:] = ids
            yield out
        buf.clear()

    for d in docs:
        buf.append(d.text)
        if len(buf) >= batch:
            yield from flush()
    if buf:
        yield from flush()


def _write_split(docs: list[Document], tokenizer: Tokenizer, folder: Path, split: str) -> dict:
    shards, n_tokens, current, current_len = [], 0, [], 0

    def write():
        name = f"{split}-{len(shards):03d}.bin"
        np.concatenate(current).tofile(folder / name)
        shards.append(name)

    for arr in encode_documents(docs, tokenizer):
        current.append(arr)
        current_len += len(arr)
        n_tokens += len(arr)
        if current_len >= SHARD_TOKENS:
            write()
            current, current_len = [], 0
    if current:
        write()
    n_bytes = sum(len(d.text.encode("utf-8", "surrogateescape")) for d in docs)
    return {"tokens": n_tokens, "bytes": n_bytes, "documents": len(docs), "shards": shards}


def _prepared_meta(folder: Path, key: str) -> dict | None:
    """meta.json of a complete prepared folder for `key`, or None (missing, unreadable or another key)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("fingerprint") == key else None


def prepare(
    data: str | None,
    tokenizer: Tokenizer,
    cache_dir: Path | str,
    *,
    include_source: bool = False,
    extensions: tuple[str, ...] = (".txt",),
    val_fraction: float = 0.05,
    seed: int = 0,
    docs: tuple[list[Document], list[Document]] | None = None,
    verbose: bool = True,
) -> Prepared:
    """Tokenize the corpus into cache_dir/data-<hash>/ unless that exists already; return it."""
    key = prepare_key(
        data, tokenizer, include_source=include_source, extensions=extensions, val_fraction=val_fraction, seed=seed
    )
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"data-{key[:16]}"
    meta = _prepared_meta(folder, key)
    if meta is not None:
        if verbose:
            print(f"data: using prepared tokens in {folder}")
        return Prepared(folder, meta)
    if docs is None:
        docs = split_documents(
            iter_documents(data, include_source=include_source, extensions=extensions), val_fraction, seed=seed
        )
    train_docs, val_docs = docs
    if folder.exists():  # a stale or broken folder of the same name (complete ones returned above)
        shutil.rmtree(folder)
    # if_exists="keep": another process that prepared the same input meanwhile wins, and we use its copy
    # (never delete a folder another process may be reading)
    with atomic_dir(folder, if_exists="keep") as tmp:
        splits = {
            "train": _write_split(train_docs, tokenizer, tmp, "train"),
            "val": _write_split(val_docs, tokenizer, tmp, "val"),
        }
        meta = {
            "fingerprint": key,
            "tokenizer": tokenizer.fingerprint(),
            "n_vocab": tokenizer.n_vocab,
            "corpus": data or "<built-in>",
            "include_source": include_source,
            "val_fraction": val_fraction,
            "dtype": token_dtype(tokenizer.n_vocab).name,
            "splits": splits,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    meta = _prepared_meta(folder, key)
    if meta is None:
        raise UserError(f"prepared data in {folder} is incomplete (another process wrote it?); delete it and retry")
    if verbose:
        t, v = splits["train"], splits["val"]
        print(
            f"data: {t['documents']} + {v['documents']} documents, {t['tokens']:,} train / {v['tokens']:,} val tokens "
            f"({t['bytes'] / max(t['tokens'], 1):.2f} bytes/token) -> {folder}"
        )
    return Prepared(folder, meta)


def check_size(prepared: Prepared, block_size: int) -> None:
    """The corpus must hold at least one training window and one validation target."""
    n_train, n_val = prepared.n_tokens("train"), prepared.n_tokens("val")
    if n_train < block_size + 1:
        raise UserError(
            f"corpus too small for the context length: {n_train} training tokens, "
            f"need at least block_size + 1 = {block_size + 1} (lower --model.block_size or add text)"
        )
    if n_val < 2:
        raise UserError(
            f"corpus too small: the validation split holds {n_val} tokens (add text or raise corpus.val_fraction)"
        )
