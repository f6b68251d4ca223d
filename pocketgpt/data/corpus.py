"""Where training text comes from: files, folders, glob patterns, jsonl, and the built-in corpus.

`data` is one string (or None):
  None                   the built-in corpus: stdlib docstrings + pydoc topics (+ stdlib source), see `builtin.py`
  "notes.txt"            one text file, one document
  "books/"               a folder, recursively: files ending in one of `extensions`, hidden files/dirs skipped
  "books/**/*.md"        a glob pattern (contains * ? or [); ** recurses; a matched folder counts as a folder
  "chats.jsonl"          one document per line, from each line's "text" field (also inside folders and globs)

Everything is sorted, so the same corpus gives the same documents in the same order on every machine.
Files are read as UTF-8 with errors="surrogateescape": invalid bytes survive exactly, and the
byte-level tokenizer round-trips them. Line endings are kept as they are on disk.

Bad input raises `UserError` with a one-line message naming the path or value. Skipped binary
files are reported through `warnings.warn` (category `CorpusWarning`), one line per file, so
callers can filter, log or turn them into errors with the standard `warnings` machinery.

What does not live here: tokenization and shards (`prepare.py`), batching (`loader.py`),
reading the stdlib (`builtin.py`). No torch.
"""

import glob
import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pocketgpt.data import builtin
from pocketgpt.errors import UserError

DEFAULT_EXTENSIONS = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".tsv", ".html", ".tex")
SNIFF_BYTES = 8192  # how much of a file the binary check looks at
MAX_NON_TEXT = 0.30  # more than this share of odd characters in the sniffed bytes -> binary
MIN_DOCS_FOR_DOC_SPLIT = 20  # below this, split_documents cuts each text instead of assigning whole documents
FINGERPRINT_VERSION = 1  # bump when the way files become documents changes

# Control characters (other than \t \n \v \f \r \b ESC) and undecodable bytes (surrogateescape's U+DC80..U+DCFF).
_NON_TEXT = re.compile("[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f\udc80-\udcff]")


class CorpusWarning(UserWarning):
    """A file of the corpus was skipped (binary)."""


@dataclass(frozen=True)
class Document:
    """One unit of text. A document is never cut in two when there are enough of them (see split_documents)."""

    name: str  # stable id: relative path, "path:lineno" for jsonl, "stdlib:module", "stdlib-src:module", "topics:NAME"
    text: str  # UTF-8 decoded with surrogateescape: text.encode("utf-8", "surrogateescape") gives the bytes back


@dataclass(frozen=True)
class Source:
    """One resolved input: a file to read, or the built-in corpus as a whole."""

    name: str  # posix path relative to the folder or glob root ("notes.txt" for a single file); "builtin" for None
    path: Path  # the file on disk; the stdlib folder for the built-in corpus
    kind: Literal["text", "jsonl", "builtin"]


# ----------------------------------------------------------------------------- resolving `data`


def _normalize_extensions(extensions: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions if e)
    if not exts:
        raise UserError(f"extensions must name at least one file ending, got {extensions!r}")
    return exts


def _kind(path: str) -> Literal["text", "jsonl"]:
    return "jsonl" if path.lower().endswith(".jsonl") else "text"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_folder(folder: str, exts: tuple[str, ...]) -> list[str]:
    """Files under `folder` (recursive, symlinked dirs not followed) ending in one of `exts`, hidden ones skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found.extend(os.path.join(dirpath, f) for f in filenames if not _is_hidden(f) and f.lower().endswith(exts))
    return found


def _glob_root(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard: 'data/**/*.txt' -> 'data'."""
    head = []
    for part in Path(pattern).parts:
        if any(c in part for c in "*?["):
            break
        head.append(part)
    return os.path.join(*head) if head else "."


def _sources(paths: Iterable[str], root: str) -> list[Source]:
    """Sources named relative to `root`, deduplicated, sorted by name."""
    by_name: dict[str, Source] = {}
    for p in paths:
        name = Path(os.path.relpath(p, root)).as_posix()
        by_name.setdefault(name, Source(name=name, path=Path(p), kind=_kind(p)))
    return [by_name[name] for name in sorted(by_name)]


def resolve_sources(
    data: str | None, *, include_source: bool = False, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> list[Source]:
    """What `data` names, checked now: the files to read in order, or [the built-in corpus] for None.

    Raises UserError for a missing path, a glob matching nothing, or a folder/glob with no matching files.
    jsonl lines are checked when read (iter_documents), so a large file is parsed once.
    """
    if data is None:
        return [Source(name="builtin", path=builtin.stdlib_root(), kind="builtin")]
    if isinstance(data, os.PathLike):  # a pathlib.Path works too
        data = os.fspath(data)
    if not isinstance(data, str) or not data.strip():
        raise UserError(f"corpus must be a path, folder or glob pattern, got {data!r}")
    exts = _normalize_extensions(extensions)
    path = os.path.expanduser(data)
    ext_list = ", ".join(exts)

    # 1) a glob pattern (unless a file by that literal name exists)
    if any(c in data for c in "*?[") and not os.path.exists(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise UserError(f"no files match the corpus pattern: {data}")
        files = [m for m in matches if os.path.isfile(m)]
        for folder in (m for m in matches if os.path.isdir(m)):
            files.extend(_walk_folder(folder, exts))
        if not files:
            raise UserError(f"corpus is empty: {data} matches only folders with no {ext_list} files")
        return _sources(files, _glob_root(path))
    # 2) a path that must exist
    if not os.path.exists(path):
        raise UserError(f"corpus not found: {data}")
    if os.path.isdir(path):
        files = _walk_folder(path, exts)
        if not files:
            raise UserError(f"corpus is empty: no {ext_list} files in folder {data}")
        return _sources(files, path)
    if os.path.isfile(path):  # a file named explicitly is read whatever its ending
        return [Source(name=Path(path).name, path=Path(path), kind=_kind(path))]
    raise UserError(f"corpus is not a file or folder: {data}")


# ----------------------------------------------------------------------------- reading documents


def is_binary(sample: bytes) -> bool:
    """True for a NUL byte, or when more than 30% of the sample is control characters or invalid UTF-8."""
    if b"\0" in sample:
        return True
    if not sample:
        return False
    text = sample.decode("utf-8", "surrogateescape")  # a character cut at the sample's end costs <= 3 odd chars
    return len(_NON_TEXT.findall(text)) > MAX_NON_TEXT * len(text)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read corpus file: {path} ({e.strerror or e})") from None


def _jsonl_documents(source: Source, text: str) -> Iterator[Document]:
    """One document per non-blank line, from its "text" field; the line number (from 1) goes into the name."""
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 etc. may sit inside strings
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"malformed JSON in {source.path} at line {lineno}: {e.msg}") from None
        value = record.get("text") if isinstance(record, dict) else None
        if not isinstance(value, str):
            got = f'"text" is {type(value).__name__}' if isinstance(record, dict) else type(record).__name__
            raise UserError(f'{source.path} line {lineno}: expected an object with a string "text" field, got {got}')
        if value.strip():
            yield Document(name=f"{source.name}:{lineno}", text=value)


def _file_documents(sources: list[Source], label: str) -> Iterator[Document]:
    yielded = 0
    binary: list[Path] = []  # binary files not yet warned about: the warning waits until a text file is seen
    text_files = 0
    for source in sources:
        raw = _read_bytes(source.path)
        if is_binary(raw[:SNIFF_BYTES]):
            binary.append(source.path)
            if text_files:
                _warn_binary(binary)
            continue
        text_files += 1
        _warn_binary(binary)
        text = raw.decode("utf-8", "surrogateescape")
        if source.kind == "jsonl":
            for doc in _jsonl_documents(source, text):
                yielded += 1
                yield doc
        elif text.strip():
            yielded += 1
            yield Document(name=source.name, text=text)
    if not text_files and binary:
        raise UserError(f"corpus has only binary files: {label} ({len(binary)} files, e.g. {binary[0]})")
    if not yielded:
        raise UserError(f"corpus is empty: {label} ({len(sources)} files, no text)")


def _warn_binary(pending: list[Path]) -> None:
    for path in pending:
        warnings.warn(f"skipping binary file in corpus: {path}", CorpusWarning, stacklevel=3)
    pending.clear()


def builtin_documents(include_source: bool = False) -> Iterator[Document]:
    """The built-in corpus, read from the stdlib's files with `ast` (nothing is imported or executed).

    Yields "stdlib:MODULE" (the module's docstrings joined), then, with include_source,
    "stdlib-src:MODULE" (its source), module by module in sorted order; then "topics:NAME",
    the pydoc help topics. About 2 MB (650 documents) without source, 13 MB with it, on CPython 3.11.
    """
    for name, text in builtin.iter_builtin_texts(include_source):
        yield Document(name=name, text=text)


def _builtin_checked(include_source: bool) -> Iterator[Document]:
    yielded = 0
    for doc in builtin_documents(include_source):
        yielded += 1
        yield doc
    if not yielded:
        raise UserError(f"corpus is empty: the built-in corpus found no text in {builtin.stdlib_root()}")


def iter_documents(
    data: str | None, *, include_source: bool = False, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> Iterator[Document]:
    """The documents of `data` in a fixed order; see the module docstring for what `data` may be.

    The path is checked at the call (UserError before any iteration). Reading is lazy: binary
    files are skipped with a CorpusWarning, empty documents are skipped, and a corpus with no
    text raises UserError("corpus is empty: ...") once the iterator is exhausted.
    """
    sources = resolve_sources(data, include_source=include_source, extensions=extensions)
    if sources[0].kind == "builtin":
        return _builtin_checked(include_source)
    return _file_documents(sources, label=str(data))


# ----------------------------------------------------------------------------- fingerprint


def corpus_fingerprint(
    data: str | None, *, include_source: bool = False, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> str:
    """A sha256 hex digest that changes when the corpus changes, from file names, sizes and mtimes only.

    No text is read: for files it hashes (relative name, size, mtime_ns) of every resolved file plus
    the options; for the built-in corpus, sys.version, the stdlib path and the stats of its .py files
    (a few milliseconds). Moving a folder elsewhere keeps its fingerprint; touching a file changes it.
    """
    sources = resolve_sources(data, include_source=include_source, extensions=extensions)
    h = hashlib.sha256()
    options = {"v": FINGERPRINT_VERSION, "include_source": include_source, "extensions": list(extensions)}
    h.update(json.dumps(options, sort_keys=True).encode())
    if sources[0].kind == "builtin":
        root = sources[0].path
        h.update(f"builtin\0{builtin.FORMAT_VERSION}\0{sys.version}\0{root}\n".encode("utf-8", "surrogatepass"))
        entries = [(rel, "py", st) for rel, st in builtin.stdlib_files(root)]
    else:
        entries = []
        for source in sources:
            try:
                entries.append((source.name, source.kind, os.stat(source.path)))
            except OSError as e:
                raise UserError(f"cannot read corpus file: {source.path} ({e.strerror or e})") from None
    for name, kind, st in entries:
        h.update(f"{name}\0{kind}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- train / validation split


def _unit_hash(seed: int, name: str) -> float:
    """A stable number in [0, 1) for (seed, name): sha256, not hash(), so it is the same in every process."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(
    docs: Iterable[Document], val_fraction: float = 0.05, *, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Split into (train, validation), deterministically; both lists keep the input order.

    With >= 20 documents, whole documents are assigned: a document goes to validation iff
    the hash of (seed, name) is below val_fraction; if none does, the one with the lowest hash
    goes. With fewer (say, one big text file), each text is cut at int(len * (1 - val_fraction))
    characters, nanoGPT's `data[:int(n*0.9)]` for val_fraction=0.1; the pieces are named
    "NAME#train" and "NAME#val", and empty pieces are dropped.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction <= 0.5:
        raise UserError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}")
    docs = list(docs)
    if not docs:
        raise UserError("cannot split an empty corpus: got 0 documents")

    # 1) enough documents: assign each one whole
    if len(docs) >= MIN_DOCS_FOR_DOC_SPLIT:
        keys = [_unit_hash(seed, d.name) for d in docs]
        in_val = [k < val_fraction for k in keys]
        if not any(in_val):  # the document closest to the threshold moves to validation
            in_val[min(range(len(docs)), key=lambda i: (keys[i], docs[i].name))] = True
        if all(in_val):  # practically impossible with val_fraction <= 0.5; keep train non-empty anyway
            in_val[max(range(len(docs)), key=lambda i: (keys[i], docs[i].name))] = False
        train = [d for d, v in zip(docs, in_val) if not v]
        val = [d for d, v in zip(docs, in_val) if v]
        return train, val

    # 2) few documents: the last val_fraction of each text goes to validation
    train, val = [], []
    for d in docs:
        cut = int(len(d.text) * (1 - val_fraction))
        if d.text[:cut]:
            train.append(Document(name=f"{d.name}#train", text=d.text[:cut]))
        if d.text[cut:]:
            val.append(Document(name=f"{d.name}#val", text=d.text[cut:]))
    if not train or not val:
        total = sum(len(d.text) for d in docs)
        raise UserError(
            f"corpus too small to split with val_fraction={val_fraction}: {total} characters in {len(docs)} documents"
        )
    return train, val
