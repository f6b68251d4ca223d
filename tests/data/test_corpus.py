"""Tests for pocketgpt.data.corpus: resolving `data`, reading documents, fingerprints, splits.

Everything is written under tmp_path; the built-in corpus is read lazily (a few documents only).
"""

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pocketgpt
from pocketgpt.data import builtin
from pocketgpt.data.corpus import (
    CorpusWarning,
    Document,
    builtin_documents,
    corpus_fingerprint,
    iter_documents,
    resolve_sources,
    split_documents,
)
from pocketgpt.errors import UserError


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def names(docs):
    return [d.name for d in docs]


# ----------------------------------------------------------------------------- files, folders, globs


def test_text_file(tmp_path):
    f = write(tmp_path / "notes.txt", "hello\r\nworld\n")
    docs = list(iter_documents(str(f)))
    assert docs == [Document(name="notes.txt", text="hello\r\nworld\n")]  # line endings kept as on disk
    assert list(iter_documents(f)) == docs  # a pathlib.Path works too


def test_folder_recursive_filtered_and_sorted(tmp_path):
    write(tmp_path / "b.txt", "b")
    write(tmp_path / "a" / "z.md", "z")
    write(tmp_path / "a" / "deep" / "y.txt", "y")
    write(tmp_path / "image.png", "not listed")
    write(tmp_path / ".git" / "config.txt", "hidden dir")
    write(tmp_path / ".hidden.txt", "hidden file")
    docs = list(iter_documents(str(tmp_path)))
    assert names(docs) == ["a/deep/y.txt", "a/z.md", "b.txt"]
    assert [d.text for d in docs] == ["y", "z", "b"]
    only_md = list(iter_documents(str(tmp_path), extensions=(".md",)))
    assert names(only_md) == ["a/z.md"]


def test_glob_with_double_star(tmp_path):
    write(tmp_path / "x.txt", "x")
    write(tmp_path / "sub" / "y.txt", "y")
    write(tmp_path / "sub" / "deeper" / "z.txt", "z")
    write(tmp_path / "sub" / "skip.md", "no")
    docs = list(iter_documents(str(tmp_path / "**" / "*.txt")))
    assert names(docs) == ["sub/deeper/z.txt", "sub/y.txt", "x.txt"]
    docs = list(iter_documents(str(tmp_path / "sub" / "*.txt")))
    assert names(docs) == ["y.txt"]


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(UserError, match="no files match"):
        resolve_sources(str(tmp_path / "*.nothing"))


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(UserError, match=f"corpus not found: {missing}"):
        iter_documents(str(missing))  # raised at the call, before iteration
    with pytest.raises(UserError, match="corpus not found"):
        corpus_fingerprint(str(missing))


def test_empty_file_and_folder(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(UserError, match="corpus is empty"):
        list(iter_documents(str(empty)))
    blank = write(tmp_path / "d" / "blank.txt", "  \n\n")
    with pytest.raises(UserError, match="corpus is empty"):
        list(iter_documents(str(blank.parent)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="corpus is empty"):
        iter_documents(str(tmp_path / "nothing"))


def test_empty_documents_are_skipped(tmp_path):
    write(tmp_path / "a.txt", "")
    write(tmp_path / "b.txt", "text")
    assert names(iter_documents(str(tmp_path))) == ["b.txt"]


# ----------------------------------------------------------------------------- jsonl


def test_jsonl_text_field(tmp_path):
    f = write(tmp_path / "data.jsonl", '{"text": "first"}\n\n{"text": "sec\\u2028ond", "id": 2}\n{"text": ""}\n')
    docs = list(iter_documents(str(f)))
    assert docs == [Document("data.jsonl:1", "first"), Document("data.jsonl:3", "sec\u2028ond")]


def test_jsonl_inside_folder(tmp_path):
    write(tmp_path / "a.jsonl", '{"text": "one"}\n{"text": "two"}\n')
    write(tmp_path / "b.txt", "three")
    assert names(iter_documents(str(tmp_path))) == ["a.jsonl:1", "a.jsonl:2", "b.txt"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl at line 2"):
        list(iter_documents(str(f)))


@pytest.mark.parametrize("line", ['{"title": "x"}', '{"text": 3}', '["text"]'])
def test_jsonl_without_string_text(tmp_path, line):
    f = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n' + line + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl line 2: expected an object with a string \"text\""):
        list(iter_documents(str(f)))


# ----------------------------------------------------------------------------- binary and bytes


def test_binary_file_skipped_with_warning(tmp_path):
    write(tmp_path / "a.txt", "alpha")
    write(tmp_path / "blob.txt", b"\x00\x01\x02" * 100)
    write(tmp_path / "noise.txt", bytes(range(128, 256)) * 4)  # no NUL, but mostly not text
    write(tmp_path / "z.txt", "omega")
    with pytest.warns(CorpusWarning) as record:
        docs = list(iter_documents(str(tmp_path)))
    assert names(docs) == ["a.txt", "z.txt"]
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert "blob.txt" in messages[0] and "noise.txt" in messages[1]


def test_only_binary_files_is_an_error(tmp_path):
    write(tmp_path / "a.txt", b"\x00" * 50)
    write(tmp_path / "b.txt", b"PK\x03\x04\x00\x00")
    with pytest.raises(UserError, match="only binary files"):
        list(iter_documents(str(tmp_path)))


def test_invalid_utf8_bytes_survive_exactly(tmp_path):
    invalid = b"bad \xff\xfe bytes and a cut \xe2\x82 char\n"
    original = "héllo wörld\n".encode() + invalid + "naïve ✓\n".encode() * 5
    f = write(tmp_path / "latin.txt", original)
    (doc,) = list(iter_documents(str(f)))
    assert doc.text.encode("utf-8", "surrogateescape") == original


# ----------------------------------------------------------------------------- built-in corpus


IMPORT_PROBE = """
import json, sys
from pocketgpt.data.corpus import builtin_documents
before = set(sys.modules)
count = sum(1 for _ in builtin_documents(include_source=True))
print(json.dumps({"count": count, "new": sorted(set(sys.modules) - before)}))
"""


def test_builtin_corpus_imports_nothing():
    # A fresh interpreter: under pytest most stdlib modules are imported already and would hide a lazy import.
    env = {**os.environ, "PYTHONPATH": str(Path(pocketgpt.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    new = [m for m in report["new"] if not m.startswith("_sysconfigdata")]  # sysconfig's own data module
    assert new == [], f"reading the built-in corpus imported {new}"
    assert report["count"] > 600


def test_builtin_corpus_has_docstrings_and_topics():
    before = set(sys.modules)
    docs = list(builtin_documents())  # one full pass, about 1 s
    assert not {m for m in set(sys.modules) - before if not m.startswith("_sysconfigdata")}
    assert len(docs) > 300 and len({d.name for d in docs}) == len(docs)
    assert all(d.text.strip() for d in docs)
    modules = [n for n in names(docs) if n.startswith("stdlib:")]
    topics = [n for n in names(docs) if n.startswith("topics:")]
    assert names(docs) == modules + topics and topics == sorted(topics) and len(topics) > 20
    by_name = {d.name: d.text for d in docs}
    assert "Abstract Base Classes" in by_name["stdlib:abc"]
    assert "JSON" in by_name["stdlib:json"]  # json/__init__.py is named after the package
    assert "operator.add(x, y) is equivalent" in by_name["stdlib:operator"]
    assert "if_stmt" in by_name["topics:if"]
    assert not any(n.startswith(("stdlib:test.", "stdlib:idlelib", "stdlib-src:")) for n in by_name)


def test_builtin_include_source_adds_source_documents():
    docs = list(itertools.islice(builtin_documents(include_source=True), 40))
    src = [d for d in docs if d.name.startswith("stdlib-src:")]
    assert len(src) >= 15
    root = builtin.stdlib_root()
    for d in src:
        parts = d.name.split(":", 1)[1].split(".")
        path = root.joinpath(*parts).with_suffix(".py")
        if not path.is_file():
            path = root.joinpath(*parts, "__init__.py")
        assert d.text.encode("utf-8", "surrogateescape") == path.read_bytes()
    assert not any(d.name.startswith("stdlib-src:") for d in itertools.islice(builtin_documents(), 40))


def test_iter_documents_none_is_builtin():
    first = next(iter_documents(None))
    assert first == next(builtin_documents())


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_changes_with_files(tmp_path):
    f = write(tmp_path / "a.txt", "one")
    write(tmp_path / "b.txt", "two")
    fp = corpus_fingerprint(str(tmp_path))
    assert fp == corpus_fingerprint(str(tmp_path)) and len(fp) == 64
    assert corpus_fingerprint(str(tmp_path), extensions=(".txt",)) != fp  # options count
    f.write_text("one, changed")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fp2 = corpus_fingerprint(str(tmp_path))
    assert fp2 != fp
    write(tmp_path / "c.txt", "three")
    assert corpus_fingerprint(str(tmp_path)) != fp2


def test_builtin_fingerprint_is_fast_and_stable():
    t0 = time.perf_counter()
    fp = corpus_fingerprint(None)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"built-in fingerprint took {elapsed:.2f} s"
    assert fp == corpus_fingerprint(None)
    assert fp != corpus_fingerprint(None, include_source=True)


# ----------------------------------------------------------------------------- split


def make_docs(n):
    return [Document(name=f"doc{i:03d}.txt", text=f"text {i} " * 10) for i in range(n)]


def test_split_by_document_is_deterministic_and_disjoint():
    docs = make_docs(400)
    train, val = split_documents(docs, 0.1, seed=0)
    assert (train, val) == split_documents(list(reversed(docs))[::-1], 0.1, seed=0)
    assert not set(names(train)) & set(names(val))
    assert sorted(names(train) + names(val)) == names(docs)  # nothing cut, nothing lost
    assert 20 <= len(val) <= 60  # ~40 expected
    assert names(train) == [n for n in names(docs) if n in set(names(train))]  # input order kept
    other_train, other_val = split_documents(docs, 0.1, seed=1)
    assert names(other_val) != names(val)


def test_split_never_leaves_validation_empty():
    docs = make_docs(20)
    train, val = split_documents(docs, 0.001)
    assert len(val) >= 1 and len(train) + len(val) == 20


def test_small_corpus_matches_nanogpt_char_split():
    text = "".join(f"line {i}: to be or not to be\n" for i in range(1000)) + "é"
    n = len(text)
    train, val = split_documents([Document("input.txt", text)], 0.1)
    assert train == [Document("input.txt#train", text[: int(n * 0.9)])]  # nanoGPT: data[:int(n*0.9)]
    assert val == [Document("input.txt#val", text[int(n * 0.9) :])]
    train2, val2 = split_documents([Document("a", "x" * 101), Document("b", "y" * 7)], 0.05)
    assert names(train2) == ["a#train", "b#train"] and names(val2) == ["a#val", "b#val"]
    assert train2[0].text + val2[0].text == "x" * 101


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 0.51, 1, float("nan"), "0.1", True])
def test_bad_val_fraction(bad):
    with pytest.raises(UserError, match="val_fraction must be in"):
        split_documents(make_docs(3), bad)


def test_split_errors_on_tiny_or_empty_corpus():
    with pytest.raises(UserError, match="too small to split"):
        split_documents([Document("a", "x")], 0.1)
    with pytest.raises(UserError, match="empty corpus"):
        split_documents([], 0.1)
