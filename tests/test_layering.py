"""Imports run one way: the package's layer order, and no import cycles, read from the source (AST, nothing imported).

This file is the layer order's source of truth (../shared/ARCHITECTURE.md draws it). A unit is a top-level module
(`pocketgpt/config.py`) or subpackage (`pocketgpt/model/`). A unit may import units of lower layers only; a lazy
import inside a function counts the same as one at the top. Within a unit, modules may import each other as long
as no cycle forms (a subpackage's `__init__` re-exporting its modules is not a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pocketgpt"

# bottom to top; a unit imports only units of strictly lower layers
LAYERS: list[set[str]] = [
    {"errors"},
    {"fileio", "presets", "config_dicts", "config_runtime"},
    {"config_serve"},  # ServeConfig: RuntimeConfig + the server's fields (config.py re-exports it)
    {"config"},
    {"device", "plot"},
    {"tokenizer", "model"},  # tokenizer: no torch; model: torch + config + errors only (see ONLY below)
    {"data", "evaluate", "checkpoint"},
    {"generate", "interop"},
    {"train", "explain", "quantize", "harness"},  # quantize: checkpoint + evaluate + data + generate (int8 dtype);
    # harness: lm-evaluation-harness over checkpoint + evaluate + generate
    {"finetune"},
    {"serve"},  # leaves: nothing imports serve but cli, and nothing imports cli
    {"cli"},
    {"__main__"},  # `python -m pocketgpt`: the CLI, for torchrun
]
# tighter rules than the layer order
ONLY = {"model": {"config", "errors"}, "data": {"errors", "fileio", "config", "tokenizer"}}
NO_THIRD_PARTY = {"tokenizer": {"torch"}}
TOP = "__init__"  # pocketgpt/__init__.py: the public API; imports anything below serve and cli


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], package: Path = PACKAGE) -> set[str]:
    """Every pocketgpt module `path` imports, anywhere in the file (`from a import b` counts a.b if it is a module)."""
    name, is_pkg = module_name(path, package), path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pocketgpt"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pocketgpt":
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
    return {m for m in found if m in modules}


def third_party_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    return {m: imports_of(p, set(files), package) - {m} for m, p in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of modules (as a path that returns to its start), ignoring a module importing its own package's
    `__init__` (`pocketgpt.generate.engine` -> `pocketgpt.generate`), which re-exports rather than depends."""

    def deps(m: str) -> set[str]:
        return {d for d in edges.get(m, ()) if not m.startswith(d + ".")}

    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(deps(m)):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)) is not None:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    level = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    level[TOP] = level["finetune"] + 0.5
    bad = []
    for src, targets in sorted(edges.items()):
        a = unit_of(src)
        for dst in sorted(targets):
            b = unit_of(dst)
            if a == b:
                continue
            if a not in level or b not in level:
                bad.append(f"{src} -> {dst}: unit {a if a not in level else b!r} is in no layer (add it to LAYERS)")
            elif a in ONLY and b not in ONLY[a]:
                bad.append(f"{src} -> {dst}: {a} may import only {sorted(ONLY[a])}")
            elif level[b] >= level[a]:
                bad.append(f"{src} -> {dst}: {a} (layer {level[a]}) may not import {b} (layer {level[b]})")
    return bad


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in graph()}
    placed = set().union(*LAYERS) | {TOP}
    assert units <= placed, f"units in no layer: {sorted(units - placed)} (add them to LAYERS)"


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_follow_the_layer_order():
    bad = layer_violations(graph())
    assert not bad, "imports that break the layer order:\n" + "\n".join(bad)


def test_tokenizer_needs_no_torch():
    for unit, banned in NO_THIRD_PARTY.items():
        for p in (PACKAGE / unit).rglob("*.py"):
            assert not (third_party_of(p) & banned), f"{p} imports {sorted(third_party_of(p) & banned)}"


# --- the checks can fail: a package with the mistakes they exist to catch ---------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "pocketgpt" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pocketgpt"


@pytest.fixture
def fake_package(tmp_path):
    def make(files: dict[str, str]) -> dict[str, set[str]]:
        return graph(_write(tmp_path, {"__init__.py": "", **files}))

    return make


def test_a_cycle_is_found(fake_package):
    edges = fake_package(
        {
            "generate/__init__.py": "from pocketgpt.generate.engine import Engine\n",
            "generate/engine.py": "def f():\n    from pocketgpt.generate.beam_search import beam\n",
            "generate/beam_search.py": "from pocketgpt.generate.engine import Engine\n",
        }
    )
    cycle = find_cycle(edges)
    assert cycle is not None and set(cycle) == {"pocketgpt.generate.engine", "pocketgpt.generate.beam_search"}


def test_a_package_reexport_is_not_a_cycle(fake_package):
    edges = fake_package(
        {
            "model/__init__.py": "from pocketgpt.model.gpt import GPT\n",
            "model/gpt.py": "from pocketgpt.model import kv_cache\n",
            "model/kv_cache.py": "",
        }
    )
    assert find_cycle(edges) is None


def test_an_upward_import_is_found(fake_package):
    edges = fake_package(
        {
            "checkpoint.py": "def load():\n    from pocketgpt.finetune.lora import load_adapter\n",  # lazy counts too
            "finetune/__init__.py": "",
            "finetune/lora.py": "from pocketgpt.checkpoint import check_tensors\n",
            "model/gpt.py": "from pocketgpt.device import autocast\n",  # model may import only config, errors
            "device.py": "",
        }
    )
    bad = layer_violations(edges)
    assert any("pocketgpt.checkpoint -> pocketgpt.finetune.lora" in b for b in bad), bad
    assert any("pocketgpt.model.gpt -> pocketgpt.device" in b and "may import only" in b for b in bad), bad
    assert not any("finetune.lora -> pocketgpt.checkpoint" in b for b in bad), bad
