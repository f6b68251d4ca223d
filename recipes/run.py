"""Task recipes with measured results, one command each:

    python recipes/run.py sentiment     --data-dir ../shared/data --out runs/recipes/sentiment      # SST-2
    python recipes/run.py translation   --data-dir ../shared/data --out runs/recipes/translation    # Tatoeba en<->zh
    python recipes/run.py gsm8k         --data-dir ../shared/data --out runs/recipes/gsm8k          # GSM8K
    python recipes/run.py summarisation --data-dir ../shared/data --out runs/recipes/summarisation  # SAMSum
    python recipes/run.py dialogue      --data-dir ../shared/data --out runs/recipes/dialogue       # DailyDialog
    python recipes/run.py squad         --data-dir ../shared/data --out runs/recipes/squad          # SQuAD v1.1
    python recipes/run.py humaneval     --data-dir ../shared/data --out runs/recipes/humaneval      # HumanEval
    ... --quick        every size shrunk (the `quick:` section of the YAML): a smoke run in seconds
    ... --config FILE  another YAML in the same layout as recipes/RECIPE.yaml
    ... --init CKPT    fine-tune this checkpoint (e.g. GPT-2 from `pocketgpt convert --from-hf`) instead of
                       pre-training one (summarisation, dialogue, squad, humaneval)

Each recipe lives in recipes/RECIPE.py (a `run(cfg, data_dir, out, report[, init])` function) with its sizes and steps
in recipes/RECIPE.yaml. It converts the raw data under --data-dir into the formats pocketgpt takes (JSONL text for
pre-training, JSONL chat records, TSV for classification) under --out/data, trains with the library's own
`pretrain` and `finetune` (no training loop here), evaluates, and writes --out/results.json and results.md.
This file only parses the arguments and dispatches; what the recipes share is in common.py.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Report, load_config  # noqa: E402

from pocketgpt.checkpoint import resolve  # noqa: E402
from pocketgpt.errors import UserError  # noqa: E402

RECIPES = ("sentiment", "translation", "gsm8k", "summarisation", "dialogue", "squad", "humaneval")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", choices=RECIPES)
    p.add_argument(
        "--data-dir",
        required=True,
        type=Path,
        help="folder holding sst2/, tatoeba-cmn/, gsm8k/, samsum/, dailydialog/, squad/ (humaneval: unused)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (data, runs, results.json)")
    p.add_argument("--quick", action="store_true", help="shrink everything (the YAML's quick: section)")
    p.add_argument("--config", help="a YAML to use instead of recipes/RECIPE.yaml")
    p.add_argument("--init", type=Path, help="fine-tune this checkpoint instead of pre-training one")
    p.add_argument("--overwrite", action="store_true", help="delete --out first if it holds anything")
    args = p.parse_args(argv)
    try:
        recipe = importlib.import_module(args.recipe).run
        if args.init is not None and "init" not in inspect.signature(recipe).parameters:
            raise UserError(f"the {args.recipe} recipe has no --init (it pre-trains its own model)")
        if args.init is not None:
            args.init = resolve(args.init)  # a checkpoint folder, or a run folder (its LATEST); UserError if neither
        if not args.data_dir.is_dir():
            raise UserError(f"--data-dir {args.data_dir} is not a folder")
        if args.out.exists() and any(args.out.iterdir()):
            if not args.overwrite:
                raise UserError(f"{args.out} is not empty; pass --overwrite to replace it")
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True, exist_ok=True)
        cfg = load_config(args.recipe, args.config, args.quick)
        report = Report(args.recipe, ["recipes/run.py", *argv])
        kwargs = {"init": args.init} if args.init is not None else {}
        metrics, tables = recipe(cfg, args.data_dir, args.out, report, **kwargs)
        report.finish(args.out, cfg, metrics, tables)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
