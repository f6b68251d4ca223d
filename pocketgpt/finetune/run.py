"""Fine-tuning a checkpoint for a task, on the same training loop as pre-training.

`finetune(checkpoint, run)` is what `pocketgpt finetune` calls. A task supplies three things and nothing else
differs from pre-training: the model to train (the GPT, or a GPT with a classification head), the batches
(`get(step, micro)` tuples the model takes), and the validation metrics.
- lm: continued pre-training on domain text (token shards, as `pocketgpt train` prepares them).
- chat: conversations rendered with the chat template; the loss counts only assistant tokens and their <|end|>.
- classify: a classification head on the last non-padding token; accuracy and macro-F1 on validation.
With LoRA (run.lora.rank > 0) only the adapters (and a classifier head / new token rows) train, and checkpoints
hold only those: they load their base checkpoint by path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pocketgpt.checkpoint import (
    load_checkpoint,
    require_float,
    resolve,
    save_adapter,
    save_checkpoint,
)
from pocketgpt.config import FinetuneRun, to_dict
from pocketgpt.errors import UserError
from pocketgpt.model.classifier import GPTClassifier
from pocketgpt.model.lora import apply_lora
from pocketgpt.train import distributed as D
from pocketgpt.train.loop import LoopResult, train_loop
from pocketgpt.train.run import finish_run, inherit_saved_config, open_run, resume_state, write_config


@dataclasses.dataclass
class Task:
    model: torch.nn.Module
    tokenizer: object
    batches: object
    evaluate: Callable[[], dict]
    meta: dict  # what the checkpoint must remember (labels, chat template)
    extra_trainable: list[str]  # parameter names that train even under LoRA


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic shuffle of n examples into train and validation indices (validation >= 1)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise UserError(f"too few examples to hold out a validation set: {n}")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def lm_task(run: FinetuneRun, model, tokenizer, device, dtype, cache_dir: Path, dist: D.Dist | None = None) -> Task:
    from pocketgpt.data.loader import TokenBatches
    from pocketgpt.data.prepare import check_size, prepare

    dist = dist if dist is not None else D.Dist()
    data = prepare(
        run.data,
        tokenizer,
        cache_dir,
        val_fraction=run.val_fraction,
        extensions=(".txt", ".md", ".rst", ".py", ".jsonl", ".json", ".html", ".tex", ".csv", ".tsv"),
    )
    check_size(data, model.config.block_size)
    batches = TokenBatches(
        data.shards("train"), model.config.block_size, run.train.batch_size, seed=run.train.seed, device=device
    )
    val, token_bytes = data.tokens("val"), tokenizer.token_byte_lengths()

    def evaluate(max_tokens: int = run.train.eval_tokens) -> dict:
        return D.val_metrics(  # the windows split across ranks under torchrun
            dist,
            model,
            val,
            token_bytes,
            batch_size=run.train.batch_size,
            max_tokens=max_tokens,
            device=device,
            dtype=dtype,
        )

    return Task(model, tokenizer, batches, evaluate, {}, [])


def chat_task(run: FinetuneRun, model, tokenizer, device, dtype) -> Task:
    from pocketgpt.data import sft
    from pocketgpt.tokenizer import chat

    tokenizer = tokenizer.with_chat_specials()
    extra = []
    if tokenizer.n_vocab > model.config.vocab_size:  # e.g. GPT-2's vocabulary: add the role tokens
        print(f"chat: adding {tokenizer.n_vocab - model.config.vocab_size} chat tokens to the vocabulary")
        model.resize_vocab(tokenizer.n_vocab)
        extra = ["transformer.wte.weight"] + ([] if model.config.tie_embeddings else ["lm_head.weight"])
    convs = sft.load_chat_records(run.data)
    examples, stats = sft.encode_chats(convs, tokenizer, model.config.block_size, run.overlong)
    print(
        f"chat: {stats['examples']} conversations, {stats['answer_tokens']:,} answer tokens; "
        f"{stats['cropped']} cropped and {stats['dropped']} dropped for the context of {model.config.block_size}"
    )
    tr, va = _split(len(examples), run.val_fraction, run.train.seed)
    batches = sft.SFTBatches(
        [examples[i] for i in tr], run.train.batch_size, model.config.block_size, seed=run.train.seed, device=device
    )
    val = [examples[i] for i in va]

    def evaluate() -> dict:
        r = sft.answer_loss(model, val, batch_size=run.train.batch_size, device=device, dtype=dtype)
        return {k: float(v) for k, v in r.items() if k == "val_answer_loss"}

    return Task(model, tokenizer, batches, evaluate, {"chat_template": chat.TEMPLATE}, extra)


def classify_task(run: FinetuneRun, model, tokenizer, device, dtype) -> Task:
    from pocketgpt.finetune import classify as C

    texts, labels = C.read_labelled(run.data, run.text_column, run.label_column)
    names = C.label_set(labels)
    encoded, kept, stats = C.encode_texts(texts, tokenizer, model.config.block_size, run.overlong)
    label_ids = [names.index(labels[i]) for i in kept]
    print(
        f"classify: {len(encoded)} examples, labels {names}; {stats.get('cropped', 0)} cropped, "
        f"{stats.get('dropped', 0)} dropped"
    )
    tr, va = _split(len(encoded), run.val_fraction, run.train.seed)
    clf = GPTClassifier.from_gpt(model, len(names))
    batches = C.ClassifyBatches(
        [encoded[i] for i in tr],
        [label_ids[i] for i in tr],
        run.train.batch_size,
        model.config.block_size,
        tokenizer.eot_id,
        seed=run.train.seed,
        device=device,
    )
    val_x, val_y = [encoded[i] for i in va], [label_ids[i] for i in va]

    def evaluate() -> dict:
        return C.classify_metrics(
            clf, val_x, val_y, len(names), batch_size=run.train.batch_size, device=device, dtype=dtype
        )

    return Task(clf, tokenizer, batches, evaluate, {"labels": names}, ["score.weight"])


def finetune(checkpoint: str | Path, run: FinetuneRun, resume: bool = False, verbose: bool = True) -> LoopResult:
    dist = D.init(run.train, run.train.device, verbose)
    try:
        return _finetune(checkpoint, run, resume, verbose, dist)
    finally:
        D.close(dist)


def _finetune(checkpoint, run: FinetuneRun, resume: bool, verbose: bool, dist: D.Dist) -> LoopResult:
    if not run.data:
        raise UserError("finetune needs --data FILE")
    if not Path(run.data).exists() and not any(ch in run.data for ch in "*?["):
        raise UserError(f"data not found: {run.data}")
    base_path = resolve(checkpoint).resolve()
    if not resume and D.restarted_with_checkpoint(dist, run.out):  # torchrun restarted the group after a failure
        resume = True
        if verbose:
            print(f"torchrun restart {dist.restarts}: resuming from the newest checkpoint in {run.out}")
    if resume:
        run = inherit_saved_config(run, run.out)  # flags not given come from the run's config.yaml
    D.check_same_config(dist, {"checkpoint": str(base_path), **to_dict(run)})
    D.check_parallel(dist, run.train, frozen=run.lora.rank > 0)
    start = open_run(run.out, resume, D.runtime_for(dist, run.train, verbose), verbose)
    out, resume_from, device, dtype = start.out, start.resume_from, start.device, start.dtype
    base = load_checkpoint(base_path)
    require_float(base, "fine-tuning")
    if base.meta.get("task") == "classify" or base.meta.get("adapter"):
        raise UserError(f"fine-tune from a plain language-model checkpoint (or merge the adapter first): {base_path}")
    torch.manual_seed(run.train.seed)
    model, tokenizer = base.model, base.tokenizer
    if run.task == "lm":
        cache = Path(run.cache_dir) if run.cache_dir else out.resolve().parent / ".cache"
        with dist.main_first():  # rank 0 prepares the shards; the others find them cached
            task = lm_task(run, model, tokenizer, device, dtype, cache, dist)
    elif run.task == "chat":
        task = chat_task(run, model, tokenizer, device, dtype)
    else:
        task = classify_task(run, model, tokenizer, device, dtype)
    model = task.model
    meta = {"task": run.task, "base_checkpoint": str(base_path), **task.meta}
    lora = run.lora.rank > 0
    if lora:
        apply_lora(model, run.lora)
        for name, p in model.named_parameters():
            if name in task.extra_trainable:
                p.requires_grad_(True)
    model.to(device)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if verbose:
        print(
            f"finetune: task {run.task} · {f'LoRA rank {run.lora.rank}' if lora else 'full'} · "
            f"{n_train:,} of {sum(p.numel() for p in model.parameters()):,} parameters train"
        )

    state = None
    if resume_from is not None:
        saved = load_checkpoint(resume_from).model
        model.load_state_dict(saved.state_dict(), strict=True)
        state = resume_state(resume_from)
    if dist.main:
        write_config(out, {"checkpoint": str(base_path), **to_dict(run)})
    trained = D.wrap(dist, model, run.train)  # DDP / FSDP2 under torchrun; the model itself in one process

    def save(name: str, step: int, state: dict, weights: dict) -> None:
        if not dist.main:
            return
        extra = {**meta, "trainable_parameters": n_train}
        writer = None
        if lora:
            extra_tensors = {n: p.detach() for n, p in model.named_parameters() if n in task.extra_trainable}
            extra.update(adapter=True, lora=dataclasses.asdict(run.lora))
            writer = lambda d: save_adapter(d, model, run.lora, extra_tensors=extra_tensors, meta=meta)  # noqa: E731
        save_checkpoint(
            out,
            name,
            model,
            task.tokenizer,
            step=step,
            train_state=state,
            extra=extra,
            write_weights=writer,
            weights=weights,
        )

    result = train_loop(
        trained,
        task.batches,
        run.train,
        out,
        save=save,
        evaluate=task.evaluate,
        resume_state=state,
        device=device,
        dtype=dtype,
        dist=dist,
    )
    if not dist.main:
        return result
    final = {**result.last_eval, "trainable_parameters": n_train}
    hint = f"pocketgpt finetune {checkpoint} --out {out} --resume"
    finish_run(out, result, final, resume_hint=hint, verbose=verbose)
    return result
