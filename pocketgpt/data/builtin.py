"""The built-in corpus: text that every Python installation carries.

Three kinds of text, read from the standard library's files on disk:
  1) docstrings: each stdlib module's module/class/function docstrings, joined, one text per module;
  2) pydoc topics: the help pages of `pydoc_data/topics.py`, one text per topic;
  3) (optional) source: the raw text of each stdlib `.py` file, one text per file.

Everything is read with `ast`, never by importing the modules, so reading the corpus runs no
stdlib code and imports nothing new. The walk is sorted, so the order is the same on every run.

What does not live here: `Document`, path/folder/jsonl handling, fingerprints and splits
(all in `corpus.py`). This module yields plain `(name, text)` pairs and knows no torch.
"""

import ast
import inspect  # noqa: F401 -- ast.get_docstring(clean=True) imports it lazily; import it up front, not mid-read
import os
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

# Folders that are not library text: third-party packages, test suites, the IDLE app, demos.
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "turtledemo"})
TOPICS_FILE = "pydoc_data/topics.py"  # read as help topics, not as a module
FORMAT_VERSION = 1  # bump when the extracted text changes, so fingerprints (and caches) change too


def stdlib_root() -> Path:
    """The standard library folder of the running interpreter (the base install, also in a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[tuple[str, os.stat_result]]:
    """Every stdlib `.py` file as (relative posix path, stat), sorted by path; skips SKIP_DIRS and hidden dirs."""
    root = stdlib_root() if root is None else root
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for fname in filenames:
            if fname.endswith(".py") and not fname.startswith("."):
                rel = fname if rel_dir == "." else f"{rel_dir}/{fname}".replace(os.sep, "/")
                found.append((rel, os.stat(os.path.join(dirpath, fname))))
    found.sort(key=lambda item: item[0])
    return found


def module_name(rel_path: str) -> str:
    """'email/mime/text.py' -> 'email.mime.text'; 'json/__init__.py' -> 'json'."""
    parts = rel_path[: -len(".py")].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _parse(source: str) -> ast.Module | None:
    """Parse without running anything; None when the file is not valid Python for this interpreter."""
    try:
        with warnings.catch_warnings():  # old files trigger SyntaxWarning/DeprecationWarning (invalid escapes)
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError covers NUL bytes and bad encodings
        return None


_DEFS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)  # where defs can hide: if/try/with/match bodies


def module_docstrings(tree: ast.Module) -> list[str]:
    """The module's docstring, then every class/function docstring in source order (nested ones included)."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, _DEFS):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                found.append(doc.strip())
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _STATEMENTS):
                visit(child)

    visit(tree)
    return found


def topics(root: Path | None = None) -> dict[str, str]:
    """The pydoc help topics (`pydoc_data.topics.topics`), read with ast.literal_eval; {} if absent."""
    root = stdlib_root() if root is None else root
    path = root / TOPICS_FILE
    try:
        tree = _parse(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except OSError:
        return {}
    for node in tree.body if tree is not None else []:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            value = ast.literal_eval(node.value)
            return {str(k): v for k, v in value.items() if isinstance(v, str)}
    return {}


def iter_builtin_texts(include_source: bool = False, root: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (name, text) pairs of the built-in corpus in a fixed order.

    Names: "stdlib:email.mime.text" (docstrings), "stdlib-src:email.mime.text" (source, only with
    include_source, right after the same module's docstrings), then "topics:NAME" sorted by NAME.
    Files that do not parse are skipped; modules without docstrings yield no docstring text.
    `pydoc_data/topics.py` yields its topics, not its source (that would repeat the same text).
    """
    root = stdlib_root() if root is None else root
    for rel, _ in stdlib_files(root):
        if rel == TOPICS_FILE:
            continue
        try:
            source = (root / rel).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
        tree = _parse(source)
        if tree is None:
            continue
        module = module_name(rel)
        docs = module_docstrings(tree)
        if docs:
            yield f"stdlib:{module}", "\n\n".join(docs) + "\n"
        if include_source and source.strip():
            yield f"stdlib-src:{module}", source
    for name, text in sorted(topics(root).items()):
        if text.strip():
            yield f"topics:{name}", text
