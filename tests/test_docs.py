"""The docs are true and stay true: README.md and every docs/**/*.md (the Chinese edition in docs/zh/ included).

The rules a doc writer follows (each is checked below by the `check_*` functions of tests/docs_checks.py, which return
the problems found, one line each):

1. Links. Every relative link `[text](path)` or `[text](path#anchor)` (images too) resolves to a file or folder
   inside this repository, relative to the .md file. Links inside code spans and fenced code are not links.
2. Heading anchors. `file.md#some-heading` (or `#some-heading` in the same file) names a heading of that file by
   GitHub's slug rules: lower case, markup and punctuation dropped (letters of any script, digits, `_` and `-`
   kept), spaces become `-`, a repeated heading gets `-1`, `-2`, ...
3. Line anchors. `path#L10-L20` (or `#L10`) points into a code file, inside its length, and at the code the link
   text names: the text holds a backticked symbol (`attend()`, `GPT.forward`, `class MLP`, `ACTIVATIONS`) and the
   anchored lines START at that symbol's definition (its first decorator or its `def` / `class` / assignment line)
   and END inside it. In a .py file the definition is found with `ast`; `GPT.forward` means the method `forward` of
   the class `GPT`. When the code moves, the link fails here instead of pointing at the wrong lines.
4. Quotes. A fenced block right after the line `<!-- quote: PATH -->` (PATH relative to the repository root) is a
   verbatim excerpt: after removing the common indentation of the excerpt and of the source lines, and trailing
   spaces, its lines appear in PATH as consecutive lines. A line `...` alone skips source lines (the parts must
   appear in order). `<!-- quote: PATH#L10-L20 -->` also pins the excerpt to exactly those lines.
5. Runnable blocks. A ```python block right after the line `<!-- run -->` runs from the repository root, in a
   fresh namespace, in one fresh interpreter per page (blocks in page order; all of a page's within RUN_TIMEOUT
   seconds, so keep sizes tiny). A block of `>>>` lines runs as a doctest: the printed values must match.
6. Marked code. Every ```python block in how-gpt-works.md (and its translation) carries one of the markers
   `<!-- quote: ... -->`, `<!-- run -->` or `<!-- sketch -->` (code that illustrates and is neither in the
   repository nor run), so no unmarked excerpt can go stale.
7. Translations. Each docs/zh/X.md with an English docs/X.md, and docs/zh/README.md against README.md's quick start
   (README.md up to its first heading after "## What you can do"), has the same set of link targets and the
   same quoted excerpts (same PATH, same text, same order) as the English page. Link targets are compared
   resolved to repository paths, a link to docs/zh/Y.md counting as one to docs/Y.md, without heading anchors
   (headings are translated; line anchors are kept), and links between a page and its own translation are left
   out. The check is skipped only while docs/zh/X.md does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from docs_checks import (
    LINE_ANCHOR,
    MARKED_PAGES,
    QUICK_START_AFTER,
    ROOT,
    RUN_TIMEOUT,
    Doc,
    _id,
    anchors,
    check_links,
    check_marked,
    check_quotes,
    check_translation,
    definitions,
    doc_paths,
    parse,
    quick_start,
    relative_targets,
    slug,
)

RUNNER = r"""
import doctest, json, sys, traceback

blocks = json.load(sys.stdin)
failures = []
for where, code in blocks:
    try:
        if any(line.startswith(">>> ") for line in code.splitlines()):
            test = doctest.DocTestParser().get_doctest(code, {"__name__": "__doc__"}, where, where, 0)
            out = []
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test, out=out.append)
            if runner.failures:
                failures.append(where + ":\n" + "".join(out))
        else:
            exec(compile(code, where, "exec"), {"__name__": "__doc__"})
    except BaseException:
        failures.append(where + ":\n" + traceback.format_exc())
print("\n" + json.dumps(failures))
"""


def run_blocks(blocks: list[tuple[str, str]]) -> list[str]:
    """Run (where, code) blocks in ONE fresh interpreter (one import of torch), each in a fresh namespace, in
    order; a block of `>>>` lines is a doctest. Returns one message per failing block."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    payload = json.dumps([(w, textwrap.dedent(c)) for w, c in blocks])
    cmd = [sys.executable, "-c", RUNNER]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, input=payload, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        return [f"the blocks did not finish in {RUN_TIMEOUT} s"]
    if r.returncode != 0 or not r.stdout.strip():
        return [f"the runner failed (exit {r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- rule 7: translations ------------------------------------------------------------------------------------------
DOCS = doc_paths()
RUNNABLE = [(p, b) for p in DOCS for b in parse(p).blocks if b.marker == "run"]


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_links_and_anchors_resolve(path):
    assert check_links(parse(path)) == []


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_quoted_excerpts_are_in_the_source(path):
    doc = parse(path)
    for b in doc.blocks:
        if b.marker is not None and b.marker != "quote" and b.arg:
            pytest.fail(f"{path.name}:{b.line}: <!-- {b.marker} --> takes no argument")
    assert check_quotes(doc) == []


@pytest.mark.parametrize("path", [p for p in DOCS if p.name in MARKED_PAGES], ids=_id)
def test_every_python_block_is_marked(path):
    assert check_marked(parse(path)) == []


@pytest.mark.parametrize("path", sorted({p for p, _ in RUNNABLE}), ids=_id)
def test_runnable_blocks_run(path):
    blocks = [b for p, b in RUNNABLE if p == path]
    for b in blocks:
        assert b.lang == "python", f"{_id(path)}:{b.line}: <!-- run --> marks ```python blocks only"
    assert run_blocks([(f"{_id(path)}:{b.line}", b.code) for b in blocks]) == []


def test_how_gpt_works_has_every_kind_of_check():
    """The page this suite exists for uses every rule, so a parser bug cannot make the suite vacuous."""
    doc = parse(ROOT / "docs" / "how-gpt-works.md")
    assert any(LINE_ANCHOR.match(a) for _, _, a in relative_targets(doc))
    assert sum(b.marker == "quote" for b in doc.blocks) >= 10
    assert any(b.marker == "run" for b in doc.blocks)


ENGLISH = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("en", [ROOT / "README.md", *ENGLISH], ids=_id)
def test_translation_has_the_same_links_and_quotes(en):
    zh = ROOT / "docs" / "zh" / en.name
    if not zh.exists():
        pytest.skip(f"no translation docs/zh/{en.name} yet")
    if en.name == "README.md":
        english = parse(en, quick_start(en))
    else:
        english = parse(en)
    assert check_translation(english, parse(zh)) == []


# ---- each check can fail: the checkers on small broken pages ---------------------------------------------------------
def _page(tmp_path: Path, text: str, name: str = "page.md") -> Doc:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return parse(p)


def _page_in_repo(tmp_path: Path, text: str) -> Doc:
    """A page parsed as if it lived in docs/ (links resolve into the real repository)."""
    doc = parse(tmp_path / "x.md", textwrap.dedent(text))
    doc.path = ROOT / "docs" / "_probe.md"
    return doc


def test_check_links_finds_broken_links_and_anchors(tmp_path):
    doc = _page_in_repo(
        tmp_path,
        """\
        # Top
        ## 3. Positional encoding
        [ok](../pocketgpt/model/attention.py) [ok](#3-positional-encoding) [ok](how-gpt-works.md#0-the-big-picture)
        [missing](../pocketgpt/model/nothere.py) [bad heading](#no-such-heading)
        [bad heading elsewhere](how-gpt-works.md#no-such) `[in code](nothere.md)` [web](https://example.com/x)
        """,
    )
    problems = check_links(doc)
    assert len(problems) == 3, problems
    assert "nothere.py" in problems[0] and "#no-such-heading" in problems[1] and "#no-such" in problems[2]


def test_check_links_checks_line_anchors_against_the_code():
    src = (ROOT / "pocketgpt/model/attention.py").read_text().split("\n")
    d = definitions("\n".join(src))["attend"]
    good = f"[`attend()`](../pocketgpt/model/attention.py#L{d[0]}-L{d[2]})"
    inner = f"[`attend()`](../pocketgpt/model/attention.py#L{d[1] + 1}-L{d[2]})"  # does not start at the def
    shifted = f"[`attend()`](../pocketgpt/model/attention.py#L{d[0] - 5}-L{d[2] - 5})"
    unnamed = f"[attention](../pocketgpt/model/attention.py#L{d[0]}-L{d[2]})"
    past_end = f"[`attend()`](../pocketgpt/model/attention.py#L{d[0]}-L{len(src) + 10})"
    method = "[`Block.forward`](../pocketgpt/model/gpt.py#L{}-L{})".format(
        *definitions((ROOT / "pocketgpt/model/gpt.py").read_text())["Block.forward"][::2]
    )
    for text, ok in (
        (good, True),
        (method, True),
        (inner, False),
        (shifted, False),
        (unnamed, False),
        (past_end, False),
    ):
        doc = parse(Path("x.md"), text)
        doc.path = ROOT / "docs" / "_probe.md"
        assert (check_links(doc) == []) is ok, (text, check_links(doc))


def test_github_slugs():
    assert slug("4. Causal multi-head self-attention") == "4-causal-multi-head-self-attention"
    assert slug("The `KVCache`, step by *step*") == "the-kvcache-step-by-step"
    assert slug("7. The stack, final norm, linear head, and where softmax lives") == (
        "7-the-stack-final-norm-linear-head-and-where-softmax-lives"
    )
    assert slug("3. 位置编码（Positional encoding）") == "3-位置编码positional-encoding"
    doc = parse(Path("x.md"), "# A\n## Notes\n## Notes\n")
    assert {"a", "notes", "notes-1"} <= anchors(doc)


def test_check_quotes_finds_changed_and_moved_excerpts(tmp_path):
    src = (ROOT / "pocketgpt/model/kv_cache.py").read_text().split("\n")
    i = next(n for n, line in enumerate(src) if "self.k[layer, :, :, self.pos : end] = k" in line)
    body = "\n".join(src[i : i + 3])
    changed = body.replace("self.pos : end", "self.pos:end")
    at = f"pocketgpt/model/kv_cache.py#L{i + 1}-L{i + 3}"
    wrong_lines = f"pocketgpt/model/kv_cache.py#L{i + 2}-L{i + 4}"
    cases = (
        ("pocketgpt/model/kv_cache.py", body, True),
        ("pocketgpt/model/kv_cache.py", textwrap.dedent(body), True),  # indentation is not compared
        ("pocketgpt/model/kv_cache.py", src[i].strip() + "\n...\n" + src[i + 2].strip(), True),
        ("pocketgpt/model/kv_cache.py", src[i + 2].strip() + "\n...\n" + src[i].strip(), False),  # out of order
        (at, body, True),
        (wrong_lines, body, False),
        ("pocketgpt/model/kv_cache.py", changed, False),
        ("pocketgpt/model/gpt.py", body, False),
        ("pocketgpt/model/none.py", body, False),
    )
    for arg, code, ok in cases:
        doc = _page(tmp_path, f"<!-- quote: {arg} -->\n```python\n{code}\n```\n")
        assert (check_quotes(doc) == []) is ok, (arg, code, check_quotes(doc))


def test_markers_must_sit_right_before_the_fence(tmp_path):
    doc = _page(tmp_path, "<!-- quote: pocketgpt/model/gpt.py -->\n\n```python\nnot quoted\n```\n")
    assert doc.blocks[0].marker is None and check_marked(doc)
    doc = _page(tmp_path, "  <!-- sketch -->\n  ```python\n  x = 1\n  ```\n")
    assert doc.blocks[0].marker == "sketch" and not check_marked(doc)


def test_run_blocks_fail_on_errors_and_wrong_doctest_output():
    cases = {
        "ok": "assert 1 + 1 == 2",
        "raises": "raise ValueError('no')",
        "exits": "raise SystemExit(3)",
        "doctest ok": ">>> 1 + 1\n2",
        "doctest wrong": ">>> 1 + 1\n3",
        "sets a name": "leak = 1",
        "fresh namespace": "assert 'leak' not in dir()",
    }
    failed = [m.split(":")[0] for m in run_blocks(list(cases.items()))]
    assert failed == ["raises", "exits", "doctest wrong"]


def test_check_translation_finds_drift(tmp_path):
    (tmp_path / "zh").mkdir()
    en = _page_in_repo(
        tmp_path,
        """\
        See [attention](../pocketgpt/model/attention.py) and [zh](zh/how-gpt-works.md#top).
        <!-- quote: pocketgpt/model/kv_cache.py -->
        ```python
        self.pos = 0
        ```
        """,
    )
    same = parse(
        tmp_path / "zh.md",
        "见 [注意力](../../pocketgpt/model/attention.py) 和 [原文](../how-gpt-works.md#顶部)。\n"
        "<!-- quote: pocketgpt/model/kv_cache.py -->\n```python\n    self.pos = 0\n```\n",
    )
    same.path = ROOT / "docs" / "zh" / "_probe.md"
    assert check_translation(en, same) == []
    lost_link = parse(Path("zh.md"), "<!-- quote: pocketgpt/model/kv_cache.py -->\n```python\nself.pos = 0\n```\n")
    lost_link.path = same.path
    assert check_translation(en, lost_link)
    other_quote = parse(
        Path("zh.md"),
        "[注意力](../../pocketgpt/model/attention.py) [x](../how-gpt-works.md)\n"
        "<!-- quote: pocketgpt/model/kv_cache.py -->\n```python\nself.pos = 1\n```\n",
    )
    other_quote.path = same.path
    assert check_translation(en, other_quote)


def test_readme_quick_start_is_the_top_of_the_readme():
    qs = quick_start(ROOT / "README.md")
    assert QUICK_START_AFTER in qs and "make quickstart" in qs
    assert len(qs) < len((ROOT / "README.md").read_text(encoding="utf-8"))


GPT2_FILES = ROOT.parent / "shared" / "data" / "gpt2"  # encoder.json + vocab.bpe, where this checkout has them


@pytest.mark.skipif(not (GPT2_FILES / "encoder.json").exists(), reason="GPT-2's vocabulary files are not here")
def test_what_how_gpt_works_says_about_gpt2s_vocabulary():
    """Section 1's GPT-2 facts, checked where GPT-2's own files are at hand (the default tests never need them)."""
    from pocketgpt import Tokenizer

    tok = Tokenizer.from_gpt2_files(GPT2_FILES)
    assert tok.n_vocab == 50257 and tok.encode("Hello world") == [15496, 995] and tok.decode([995]) == " world"
    assert [tok.decode_bytes([i]) for i in tok.encode(" 🤖")] == [b" \xf0\x9f", b"\xa4", b"\x96"]
    assert len(tok.encode("<|endoftext|>")) == 7 and tok.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert tok.decode([0]) == "!"
    chat = tok.with_chat_specials().special_tokens
    assert [chat[s] for s in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")] == [50257, 50258, 50259, 50260]
