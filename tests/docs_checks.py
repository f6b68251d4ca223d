"""The checkers behind tests/test_docs.py: parse a markdown page and return its problems, one line each.

The rules they enforce are written at the top of tests/test_docs.py."""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

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
