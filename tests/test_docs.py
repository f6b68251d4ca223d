"""The docs are true and stay true: README.md and every docs/**/*.md (the Chinese edition in docs/zh/ included).

The rules a doc writer follows (each is checked below; `check_*` return the problems found, one line each):

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

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 120  # seconds for all runnable blocks of one page
MARKED_PAGES = ("how-gpt-works.md",)  # rule 6
QUICK_START_AFTER = "## What you can do"  # rule 7: README's quick start ends at the next heading after this one

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*(quote|run|sketch)\s*:?\s*(\S*?)\s*-->\s*$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
LINE_ANCHOR = re.compile(r"^L(\d+)(?:-L(\d+))?$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")
NAME = re.compile(r"^(?:class\s+|def\s+)?([A-Za-z_][\w.]*)(?:\(.*\))?$")


@dataclass
class Block:
    lang: str
    code: str  # the fence's content, as written (indentation kept)
    line: int  # 1-based line of the opening fence
    marker: str | None = None  # quote | run | sketch
    arg: str = ""  # the quote's PATH[#Lx-Ly]


@dataclass
class Link:
    text: str
    target: str
    line: int


@dataclass
class Doc:
    path: Path
    prose: str  # the text with fenced blocks blanked (line numbers kept)
    blocks: list[Block] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    headings: list[str] = field(default_factory=list)  # raw heading texts, in order


def parse(path: Path, text: str | None = None) -> Doc:
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.split("\n")
    prose, blocks = list(lines), []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m.group(2), i
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            j += 1
        block = Block(m.group(3), "\n".join(lines[i + 1 : j]), i + 1)
        mm = MARKER.match(lines[i - 1]) if i > 0 else None  # the marker is the line right before the fence
        if mm:
            block.marker, block.arg = mm.group(1), mm.group(2)
        blocks.append(block)
        for k in range(start, min(j + 1, len(lines))):
            prose[k] = ""
        i = j + 1
    doc = Doc(path, "\n".join(prose), blocks)
    spans = [(m.start(), m.end()) for m in CODE_SPAN.finditer(doc.prose)]
    no_comments = re.sub(r"<!--.*?-->", lambda m: " " * len(m.group()), doc.prose, flags=re.S)

    def in_span(pos: int) -> bool:
        return any(a <= pos < b for a, b in spans)

    for m in LINK.finditer(no_comments):
        if not in_span(m.start()):
            doc.links.append(Link(m.group(2), m.group(3), doc.prose.count("\n", 0, m.start()) + 1))
    for m in REF_DEF.finditer(no_comments):
        doc.links.append(Link("", m.group(1), doc.prose.count("\n", 0, m.start()) + 1))
    for line in doc.prose.split("\n"):
        h = HEADING.match(line)
        if h:
            doc.headings.append(h.group(2))
    return doc


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(doc: Doc) -> set[str]:
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(doc.prose))
    for h in doc.headings:
        s = slug(h)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def relative_targets(doc: Doc) -> list[tuple[Link, str, str]]:
    """(link, path part, anchor) of every relative link."""
    out = []
    for link in doc.links:
        if SCHEME.match(link.target):
            continue
        path, _, anchor = link.target.partition("#")
        out.append((link, path, anchor))
    return out


def _rel(p: Path) -> str:
    p = p.resolve()
    return p.relative_to(ROOT.resolve()).as_posix() if ROOT.resolve() in p.parents else str(p)


def resolve(doc: Doc, path: str) -> Path:
    return (doc.path.parent / path).resolve() if path else doc.path.resolve()


# ---- rule 3: which lines a symbol occupies -----------------------------------------------------------------------
def definitions(source: str) -> dict[str, tuple[int, int, int]]:
    """{"name": (first line incl. decorators, def/class line, last line)} for every top-level def, class and
    assignment, and "Class.method" for methods (and class-level assignments)."""
    out: dict[str, tuple[int, int, int]] = {}

    def visit(body, prefix: str) -> None:
        for node in body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            for name in names:
                out.setdefault(prefix + name, (first, node.lineno, node.end_lineno))
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return out


def named_symbols(link_text: str) -> list[str]:
    """The symbols a link's text names: its backticked code spans that read as names (`attend()`, `GPT.forward`,
    `class MLP`); file names (`gpt.py`) are not symbols."""
    out = []
    for m in CODE_SPAN.finditer(link_text):
        n = NAME.match(m.group(2).strip())
        if n and not re.search(r"\.(py|md|toml|yaml|yml|json|txt)$", n.group(1)):
            out.append(n.group(1))
    return out


def symbol_span(defs: dict, name: str) -> tuple[int, int, int] | None:
    if name in defs:
        return defs[name]
    tails = [v for k, v in defs.items() if k.endswith("." + name)]  # `forward` alone: a method of some class
    return tails[0] if len(tails) == 1 else None


def check_line_anchor(link: Link, target: Path, a: int, b: int) -> str | None:
    lines = target.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not 1 <= a <= b <= len(lines):
        return f"lines L{a}-L{b} are outside {target.name} ({len(lines)} lines)"
    names = named_symbols(link.text)
    if not names:
        return "a line link's text must name the code it points at in backticks (`attend()`, `GPT.forward`)"
    if target.suffix == ".md":
        return "line anchors on a .md file do not work on GitHub: link a heading"
    if target.suffix != ".py":
        chunk = "\n".join(lines[a - 1 : b])
        return None if any(n.split(".")[-1] in chunk for n in names) else f"L{a}-L{b} do not contain {names}"
    defs = definitions("\n".join(lines))
    found = []
    for n in names:
        span = symbol_span(defs, n)
        if span is None:
            continue
        first, defline, last = span
        if first <= a <= defline and defline <= b <= last:
            return None
        found.append(f"{n} is L{first}-L{last} (def at L{defline})")
    if not found:
        return f"{names} not defined in {target.name}"
    return f"L{a}-L{b} does not start at and stay inside the named code: " + "; ".join(found)


def check_links(doc: Doc) -> list[str]:
    problems = []
    cache: dict[Path, set[str]] = {}
    for link, path, anchor in relative_targets(doc):
        where = f"{_rel(doc.path)}:{link.line}: [{link.text}]({link.target})"
        target = resolve(doc, path)
        if path and not target.exists():
            problems.append(f"{where}: {target} does not exist")
            continue
        if ROOT.resolve() not in (target, *target.parents):
            problems.append(f"{where}: points outside the repository")
            continue
        if not anchor:
            continue
        m = LINE_ANCHOR.match(anchor)
        if m:
            a, b = int(m.group(1)), int(m.group(2) or m.group(1))
            err = "not a file" if target.is_dir() else check_line_anchor(link, target, a, b)
            if err:
                problems.append(f"{where}: {err}")
        elif target.suffix == ".md":
            if target not in cache:
                cache[target] = anchors(doc if not path else parse(target))
            if anchor not in cache[target]:
                problems.append(f"{where}: no heading #{anchor} in {target.name}")
        else:
            problems.append(f"{where}: #{anchor} is neither a line anchor nor a heading of a .md file")
    return problems


# ---- rule 4: quotes ------------------------------------------------------------------------------------------------
def _norm(lines: list[str]) -> list[str]:
    return textwrap.dedent("\n".join(line.rstrip() for line in lines)).split("\n")


def _strip_blank(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def quote_parts(code: str) -> list[list[str]]:
    parts, cur = [], []
    for line in code.split("\n"):
        if line.strip() == "...":
            parts.append(cur)
            cur = []
        else:
            cur.append(line)
    parts.append(cur)
    return [_norm(_strip_blank(p)) for p in parts if _strip_blank(p)]


def find_quote(source_lines: list[str], parts: list[list[str]], lo: int, hi: int) -> tuple[int, int] | None:
    """The (first, last) 0-based source lines holding the parts in order within [lo, hi), or None."""
    start, pos = None, lo
    for part in parts:
        n = len(part)
        hit = next((i for i in range(pos, hi - n + 1) if _norm(source_lines[i : i + n]) == part), None)
        if hit is None:
            return None
        start = hit if start is None else start
        pos = hit + n
    return (start, pos - 1) if start is not None else None


def check_quote(block: Block, where: str) -> str | None:
    path, _, anchor = block.arg.partition("#")
    src = ROOT / path
    if not path or not src.is_file():
        return f"{where}: quote source {path!r} is not a file (PATH is relative to the repository root)"
    lines = src.read_text(encoding="utf-8").split("\n")
    parts = quote_parts(block.code)
    if not parts:
        return f"{where}: the quote is empty"
    lo, hi = 0, len(lines)
    if anchor:
        m = LINE_ANCHOR.match(anchor)
        if not m:
            return f"{where}: #{anchor} is not a line anchor (#L10-L20)"
        lo, hi = int(m.group(1)) - 1, int(m.group(2) or m.group(1))
        if not 0 <= lo < hi <= len(lines):
            return f"{where}: L{lo + 1}-L{hi} are outside {path} ({len(lines)} lines)"
    span = find_quote(lines, parts, lo, hi)
    if span is None:
        return f"{where}: the quoted code is not in {block.arg} (verbatim, after removing common indentation)"
    if anchor and span != (lo, hi - 1):
        return f"{where}: the quote is at L{span[0] + 1}-L{span[1] + 1} of {path}, not {anchor}"
    return None


def check_quotes(doc: Doc) -> list[str]:
    out = []
    for b in doc.blocks:
        if b.marker == "quote":
            err = check_quote(b, f"{_rel(doc.path)}:{b.line}")
            if err:
                out.append(err)
    return out


def check_marked(doc: Doc) -> list[str]:
    return [
        f"{_rel(doc.path)}:{b.line}: a ```python block needs <!-- quote: PATH -->, <!-- run --> or <!-- sketch -->"
        for b in doc.blocks
        if b.lang == "python" and b.marker is None
    ]


# ---- rule 5: runnable blocks ---------------------------------------------------------------------------------------
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
def link_set(doc: Doc, own: set[Path]) -> set[str]:
    """The doc's link targets as repository paths (docs/zh/Y -> docs/Y), heading anchors dropped, links to the page
    itself or its translation (`own`) left out."""
    zh, docs, out = (ROOT / "docs" / "zh").resolve(), (ROOT / "docs").resolve(), set()
    for _, path, anchor in relative_targets(doc):
        target = resolve(doc, path)
        if zh in target.parents:
            target = docs / target.relative_to(zh)
        if target in own:
            continue
        rel = target.relative_to(ROOT.resolve()).as_posix() if ROOT.resolve() in target.parents else str(target)
        out.add(rel + (f"#{anchor}" if LINE_ANCHOR.match(anchor) else ""))
    return out


def quote_list(doc: Doc) -> list[tuple[str, list[list[str]]]]:
    return [(b.arg, quote_parts(b.code)) for b in doc.blocks if b.marker == "quote"]


def quick_start(readme: Path) -> str:
    lines = readme.read_text(encoding="utf-8").split("\n")
    assert QUICK_START_AFTER in lines, f"README.md has no heading {QUICK_START_AFTER!r}: update QUICK_START_AFTER"
    start = lines.index(QUICK_START_AFTER)
    doc = parse(readme)
    prose = doc.prose.split("\n")
    end = next((i for i in range(start + 1, len(lines)) if HEADING.match(prose[i])), len(lines))
    return "\n".join(lines[:end])


def check_translation(en: Doc, zh: Doc) -> list[str]:
    own = {en.path.resolve(), zh.path.resolve()}
    e, z, problems = _rel(en.path), _rel(zh.path), []
    a, b = link_set(en, own), link_set(zh, own)
    if a - b:
        problems.append(f"{z} lacks links to {sorted(a - b)} that {e} has")
    if b - a:
        problems.append(f"{z} links to {sorted(b - a)}, which {e} does not")
    qa, qb = quote_list(en), quote_list(zh)
    if [q[0] for q in qa] != [q[0] for q in qb]:
        problems.append(f"{z} quotes {[q[0] for q in qb]} but {e} quotes {[q[0] for q in qa]}")
    else:
        for n, (x, y) in enumerate(zip(qa, qb)):
            if x != y:
                problems.append(f"{z}'s quoted excerpt {n + 1} (from {x[0]}) differs from {e}'s")
    return problems


# ---- the tests -----------------------------------------------------------------------------------------------------
def doc_paths() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _id(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


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
