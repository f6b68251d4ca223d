"""What the recipes share: config files, training stages, per-stage timing and memory, answer losses, batched chat
decoding, tables.

Lives here: reading a recipe's YAML (with its `quick:` overrides); building `TrainRun` / `FinetuneRun` from plain
dicts (the library's own schema, so unknown keys are errors); the base checkpoint (pre-trained here, or `--init`)
and the fine-tuning stage, each returning its figures; the `Report` that times each stage and records its peak
memory; the answer-token loss of chat conversations; greedy chat completion in batches; the markdown tables.
Not here: any training loop (the stages call `pretrain` and `finetune`), the recipes themselves (one module each,
named after the recipe), argument parsing (run.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.config import FinetuneRun, SampleConfig, TrainRun, deep_merge, from_dict, to_dict
from pocketgpt.device import describe_cpu

RECIPES_DIR = Path(__file__).resolve().parent


# --- config ---------------------------------------------------------------------------------------


def load_config(recipe: str, path: str | None = None, quick: bool = False) -> dict:
    """The recipe's YAML (recipes/RECIPE.yaml unless `path`), with its `quick:` section applied if asked."""
    p = Path(path) if path else RECIPES_DIR / f"{recipe}.yaml"
    cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    quick_over = cfg.pop("quick", {}) or {}
    return deep_merge(cfg, quick_over) if quick else cfg


def train_run(cfg: dict, data: Path, out: Path) -> TrainRun:
    """A pre-training run from the recipe's `model`, `tokenizer` and `pretrain` (TrainConfig fields) sections."""
    return from_dict(
        TrainRun,
        {
            "data": str(data),
            "out": str(out),
            "model": cfg["model"],
            "tokenizer": cfg["tokenizer"],
            "corpus": cfg.get("corpus", {}),
            "train": cfg["pretrain"],
        },
    )


def finetune_run(section: dict, data: Path, out: Path, task: str) -> FinetuneRun:
    """A fine-tuning run from one `finetune*` section: FinetuneRun fields (train, lora, val_fraction, ...)."""
    return from_dict(FinetuneRun, {**section, "data": str(data), "out": str(out), "task": task})


def base_checkpoint(cfg: dict, corpus: Path, out: Path, report, init: Path | None = None) -> tuple[Path, dict]:
    """The checkpoint to fine-tune and its figures: `init` as given (e.g. GPT-2 converted with `pocketgpt convert
    --from-hf`), else a model pre-trained on `corpus` into out/base (stage "pre-train": final.json, time, memory)."""
    if init is not None:
        print(f"--init {init}: fine-tuning that checkpoint, no pre-training")
        return init, {"init": str(init), "parameters": load_checkpoint(init).model.num_params()}
    from pocketgpt.train.pretrain import pretrain

    with report.stage("pre-train") as st:
        pretrain(train_run(cfg, corpus, out / "base"))
    return out / "base", {**final(out / "base"), **cost(st), "parameters": trainable_parameters(out / "base")}


def finetune_stage(
    report, base: Path, section: dict, data, out_dir: Path, task: str = "chat", stage: str = "chat fine-tune"
) -> dict:
    """Stage `stage`: fine-tune checkpoint `base` with one `finetune*` section into out_dir. `data`: the input file,
    or a function that writes it and returns its path (called inside the stage, so its time counts). Returns
    final.json's figures, the stage's time and memory and the trainable-parameter count."""
    from pocketgpt.finetune.run import finetune

    with report.stage(stage) as st:
        finetune(base, finetune_run(section, data() if callable(data) else data, out_dir, task))
    return {**final(out_dir), **cost(st), "trainable_parameters": trainable_parameters(out_dir)}


def tokenizer_and_block(checkpoint: Path) -> tuple[Any, int]:
    """The checkpoint's tokenizer as chat fine-tuning extends it (with the chat special tokens, which GPT-2's lacks;
    one that has them is returned as it is) and its context length; the model itself is let go."""
    ckpt = load_checkpoint(checkpoint)
    return ckpt.tokenizer.with_chat_specials(), ckpt.model.config.block_size


def who(init: Path | None, tail: str = "") -> str:
    """The model's row label in a results table: pre-trained here, or the --init checkpoint."""
    return ("GPT-2 (--init) chat fine-tuned" if init else "GPT pre-trained here, chat fine-tuned") + tail


def write_jsonl(path: Path, records) -> Path:
    """One JSON object per line, ASCII-escaped: readers that split lines with str.splitlines() would otherwise cut
    a record at a raw U+2028 / U+0085 inside a string (GSM8K has some)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")
    return path


def trainable_parameters(run_dir: Path) -> int:
    """The count `finetune` wrote into final.json; for a pre-training run, every parameter of its checkpoint."""
    final = json.loads((run_dir / "final.json").read_text())
    if "trainable_parameters" in final:
        return int(final["trainable_parameters"])
    return load_checkpoint(run_dir).model.num_params()


# --- timing and memory ----------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so a stage starts from what is really in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_mb() -> float:
    """Current resident memory (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


class Report:
    """Times each stage and records two memory figures: the peak RSS during the stage (the kernel's mark is
    reset when a stage starts, where Linux allows it) and the process's peak RSS so far (ru_maxrss)."""

    def __init__(self, recipe: str, argv: list[str]):
        self.recipe = recipe
        self.t0 = time.perf_counter()
        self.stages: list[dict] = []
        self.process_peak = _peak_rss_mb()
        self.per_stage = True
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.env = {
            "cpu": describe_cpu(),
            "machine": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_at_start": load,
            "command": " ".join(["python", *argv]),
        }
        print(
            f"== recipe {recipe} · {self.env['cpu']} · torch {torch.__version__} · {self.env['date']} · "
            f"load average {_fmt_load(load)}"
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        print(f"\n== stage {name}", flush=True)
        _release_freed_memory()
        self.per_stage = _reset_peak_rss() and self.per_stage
        rec: dict[str, Any] = {"stage": name, "rss_start_mb": round(_rss_mb(), 1)}
        t = time.perf_counter()
        yield rec
        rec["wall_s"] = round(time.perf_counter() - t, 1)
        peak = _peak_rss_mb()
        self.process_peak = max(self.process_peak, peak)
        rec["peak_rss_mb"] = round(peak if self.per_stage else self.process_peak, 1)
        rec["process_peak_rss_mb"] = round(self.process_peak, 1)
        self.stages.append(rec)
        print(
            f"== stage {name}: {rec['wall_s']} s · peak RSS {rec['peak_rss_mb']} MB "
            f"(process so far {rec['process_peak_rss_mb']} MB)",
            flush=True,
        )

    def finish(self, out: Path, cfg: dict, metrics: dict, tables: list[str]) -> dict:
        result = {
            "recipe": self.recipe,
            "env": self.env,
            "total_wall_s": round(time.perf_counter() - self.t0, 1),
            "peak_rss_note": "peak_rss_mb: peak resident memory during the stage"
            + ("" if self.per_stage else " (not resettable here: process peak so far)")
            + "; rss_start_mb: resident memory when the stage began (after gc and malloc_trim)"
            "; process_peak_rss_mb: the process's peak so far (ru_maxrss)",
            "stages": self.stages,
            "metrics": metrics,
            "config": cfg,
        }
        (out / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        md = "\n\n".join([self.header(result), *tables, self.stage_table()])
        (out / "results.md").write_text(md + "\n", encoding="utf-8")
        print("\n" + md)
        return result

    def header(self, result: dict) -> str:
        e = self.env
        return (
            f"**{self.recipe}** · {e['cpu']} · {e['machine']} · torch {e['torch']} · {e['threads']} threads · "
            f"{e['date']} · load average at start {_fmt_load(e['load_average_at_start'])} · "
            f"total {result['total_wall_s'] / 60:.1f} min\n\n`{e['command']}`"
        )

    def stage_table(self) -> str:
        rows = [
            [
                s["stage"],
                f"{s['wall_s']:.1f}",
                f"{s['rss_start_mb']:.0f}",
                f"{s['peak_rss_mb']:.0f}",
                f"{s['process_peak_rss_mb']:.0f}",
            ]
            for s in self.stages
        ]
        return table(
            ["stage", "wall (s)", "RSS at start (MB)", "peak RSS in stage (MB)", "process peak so far (MB)"], rows
        )


def cost(stage: dict) -> dict:
    """Wall time and memory (RSS at its start, peak during it) of a closed stage."""
    return {k: stage[k] for k in ("wall_s", "rss_start_mb", "peak_rss_mb")}


def mem(c: dict) -> str:
    return f"{c['peak_rss_mb']:.0f} (+{c['peak_rss_mb'] - c['rss_start_mb']:.0f})"


def final(run_dir: Path) -> dict:
    """The figures a training run wrote into its final.json."""
    return json.loads((run_dir / "final.json").read_text())


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt_load(load: float | None) -> str:
    return "n/a" if load is None else f"{load:.2f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ⏎ ") for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --- answer loss ----------------------------------------------------------------------------------


def eval_dtype(cfg: dict) -> torch.dtype:
    """The autocast dtype training used (the `pretrain` section's dtype on this CPU), for scoring the same way."""
    from pocketgpt.device import pick_dtype

    return pick_dtype(cfg["pretrain"].get("dtype", "auto"), torch.device("cpu"))


def answer_loss(ckpt, convs: list, dtype) -> dict:
    """Mean loss (nats/token) of the assistant tokens of chat conversations, each cropped to the model's context;
    with the token count and sft.encode_chats's counts (cropped, ...)."""
    from pocketgpt.data import sft

    examples, stats = sft.encode_chats(convs, ckpt.tokenizer, ckpt.model.config.block_size, "crop")
    r = sft.answer_loss(ckpt.model, examples, batch_size=16, dtype=dtype)
    return {"answer_loss": r["val_answer_loss"], "answer_tokens": r["val_answer_tokens"], **stats}


def base_answer_loss(report, base: Path, convs: list, dtype, stage: str) -> dict | None:
    """Stage `stage`: answer_loss under the base checkpoint, or None (no stage) when its tokenizer has no chat
    tokens yet, as GPT-2 converted with `pocketgpt convert --from-hf` (fine-tuning adds them)."""
    from pocketgpt.tokenizer.chat import chat_problem

    ckpt = load_checkpoint(base)
    if chat_problem(ckpt.tokenizer, None) is not None:
        return None
    with report.stage(stage):
        return answer_loss(ckpt, convs, dtype)


# --- generation -----------------------------------------------------------------------------------


def chat_complete(
    model,
    tokenizer,
    chats: list,
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    stop: tuple[str, ...] = (),
    strip: bool = True,
) -> list[str]:
    """Greedy answers, decoded in batches of similar prompt lengths (float32). Each of `chats` is a user message
    (a string) or a conversation so far (a list of {"role", "content"}); the answer is the next assistant turn.
    `stop`: strings that also end an answer (never part of it; with them, so do the role strings spelled out as text,
    as the server does); `strip=False` keeps the answer's leading indentation (code)."""
    from pocketgpt.generate.text import TextGenerator
    from pocketgpt.tokenizer import chat

    gen = TextGenerator(model, tokenizer, device="cpu")
    convs = [[{"role": "user", "content": c}] if isinstance(c, str) else c for c in chats]
    prompts = [chat.render_for_completion(c, tokenizer) for c in convs]
    stops = chat.stop_token_ids(tokenizer)
    sample = SampleConfig(
        max_new_tokens=max_new_tokens, temperature=0, stop=chat.answer_stops(tuple(stop)) if stop else ()
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        for i, row in zip(chunk, gen.complete_ids_batch([prompts[i] for i in chunk], sample, stops)):
            out[i] = row[0].text.strip() if strip else row[0].text.rstrip()
        print(f"  generated {min(s + batch_size, len(order))}/{len(order)}", flush=True)
    return out


__all__ = [
    "Report",
    "answer_loss",
    "base_answer_loss",
    "base_checkpoint",
    "chat_complete",
    "cost",
    "eval_dtype",
    "final",
    "finetune_run",
    "finetune_stage",
    "load_config",
    "mem",
    "pct",
    "table",
    "to_dict",
    "tokenizer_and_block",
    "train_run",
    "trainable_parameters",
    "who",
    "write_jsonl",
]
