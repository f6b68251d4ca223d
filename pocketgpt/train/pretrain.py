"""Pre-training from raw text: tokenizer (trained or loaded, cached) -> prepared shards (cached) -> GPT -> the loop.

`pretrain(run)` is what `pocketgpt train` calls; everything it needs is in the `TrainRun` config. It writes
into `run.out`: config.yaml (the resolved config), metrics.jsonl, checkpoints, loss.png. What does not live
here: the loop itself (loop.py), parsing flags (cli/).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch

from pocketgpt.checkpoint import load_checkpoint, load_tokenizer, save_checkpoint
from pocketgpt.config import TrainRun, to_dict
from pocketgpt.data.corpus import corpus_fingerprint, iter_documents, split_documents
from pocketgpt.data.loader import TokenBatches
from pocketgpt.data.prepare import check_size, prepare
from pocketgpt.device import peak_flops
from pocketgpt.errors import UserError
from pocketgpt.model import GPT
from pocketgpt.tokenizer import Tokenizer
from pocketgpt.train import distributed as D
from pocketgpt.train.loop import LoopResult, train_loop
from pocketgpt.train.run import finish_run, inherit_saved_config, open_run, resume_state, write_config


def cache_dir_for(run: TrainRun) -> Path:
    return Path(run.cache_dir) if run.cache_dir else Path(run.out).resolve().parent / ".cache"


def load_or_train_tokenizer(run: TrainRun, train_docs=None, verbose: bool = True) -> Tokenizer:
    """The run's tokenizer: loaded from tokenizer.path, or trained on the training split and cached."""
    tcfg = run.tokenizer
    if tcfg.path:
        return load_tokenizer(tcfg.path)
    c = run.corpus
    key = hashlib.sha256(
        json.dumps(
            [
                corpus_fingerprint(run.data, include_source=c.include_source, extensions=c.extensions),
                c.val_fraction,
                tcfg.kind,
                tcfg.vocab_size,
            ]
        ).encode()
    ).hexdigest()[:16]
    folder = cache_dir_for(run) / f"tokenizer-{key}"
    if (folder / "pocketgpt_tokenizer.json").exists():
        if verbose:
            print(f"tokenizer: using cached {folder}")
        return Tokenizer.load(folder)
    if train_docs is None:
        train_docs, _ = split_documents(
            iter_documents(run.data, include_source=c.include_source, extensions=c.extensions), c.val_fraction
        )
    if verbose:
        print(f"tokenizer: training {tcfg.kind} vocabulary ({tcfg.vocab_size}) on {len(train_docs)} documents")
    tok = Tokenizer.train((d.text for d in train_docs), vocab_size=tcfg.vocab_size, kind=tcfg.kind)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(folder)
    return tok


def pretrain(run: TrainRun, resume: bool = False, verbose: bool = True) -> LoopResult:
    dist = D.init(run.train, run.train.device, verbose)
    try:
        return _pretrain(run, resume, verbose, dist)
    finally:
        D.close(dist)


def _pretrain(run: TrainRun, resume: bool, verbose: bool, dist: D.Dist) -> LoopResult:
    if not resume and D.restarted_with_checkpoint(dist, run.out):  # torchrun restarted the group after a failure
        resume = True
        if verbose:
            print(f"torchrun restart {dist.restarts}: resuming from the newest checkpoint in {run.out}")
    if resume:
        run = inherit_saved_config(run, run.out)  # flags not given come from the run's config.yaml
    D.check_same_config(dist, to_dict(run))
    D.check_parallel(dist, run.train, frozen=False)
    start = open_run(run.out, resume, D.runtime_for(dist, run.train, verbose), verbose)
    out, resume_from, device, dtype = start.out, start.resume_from, start.device, start.dtype

    c = run.corpus
    docs = None
    if resume_from is None and not run.tokenizer.path:
        docs = split_documents(
            iter_documents(run.data, include_source=c.include_source, extensions=c.extensions), c.val_fraction
        )
    with dist.main_first():  # rank 0 trains the tokenizer and prepares the shards; the others find them cached
        tokenizer = (
            Tokenizer.load(resume_from)
            if resume_from
            else load_or_train_tokenizer(run, docs[0] if docs else None, verbose)
        )
        data = prepare(
            run.data,
            tokenizer,
            cache_dir_for(run),
            include_source=c.include_source,
            extensions=c.extensions,
            val_fraction=c.val_fraction,
            docs=docs,
            verbose=verbose,
        )
    check_size(data, run.model.block_size)
    n_batches = len(D.eval_windows_of(data.n_tokens("val"), run.model.block_size, run.train.batch_size))
    D.check_world_fits(dist, n_batches, "the validation split's evaluation batches")

    run = replace(run, model=replace(run.model, vocab_size=tokenizer.n_vocab))
    torch.manual_seed(run.train.seed)
    state = None
    if resume_from is not None:
        model = load_checkpoint(resume_from).model
        if to_dict(model.config) != to_dict(run.model):
            raise UserError(f"--resume: the model config differs from the checkpoint's in {resume_from}")
        state = resume_state(resume_from)
    else:
        model = GPT(run.model)
    model.to(device)
    if dist.main:
        write_config(out, to_dict(run))
    if verbose:
        print(
            f"model: {model.num_params() / 1e6:.2f}M parameters · {run.model.n_layer} layers · "
            f"{run.model.n_embd} wide · context {run.model.block_size} · vocab {run.model.vocab_size}"
        )

    batches = TokenBatches(
        data.shards("train"), run.model.block_size, run.train.batch_size, seed=run.train.seed, device=device
    )
    val_tokens = data.tokens("val")
    token_bytes = tokenizer.token_byte_lengths()

    trained = D.wrap(dist, model, run.train)  # DDP / FSDP2 under torchrun; the model itself in one process
    evaluated = trained if dist.parallel == "fsdp" else model  # FSDP's forward gathers shards: all ranks run it

    def evaluate(max_tokens: int = run.train.eval_tokens) -> dict:
        return D.val_metrics(  # the windows split across ranks under torchrun
            dist,
            evaluated,
            val_tokens,
            token_bytes,
            batch_size=run.train.batch_size,
            max_tokens=max_tokens,
            device=device,
            dtype=dtype,
        )

    def save(name: str, step: int, state: dict, weights: dict) -> None:
        if not dist.main:
            return
        save_checkpoint(
            out,
            name,
            model,
            tokenizer,
            weights=weights,
            step=step,
            train_state=state,
            extra={"data": data.meta["fingerprint"], "dtype": str(dtype).replace("torch.", "")},
        )

    result = train_loop(
        trained,
        batches,
        run.train,
        out,
        save=save,
        evaluate=evaluate,
        resume_state=state,
        device=device,
        dtype=dtype,
        flops_per_token=model.flops_per_token(),
        peak_flops=peak_flops(device, dtype) * dist.world,
        dist=dist,
    )
    final = None
    if not result.interrupted:
        result.last_eval = evaluate(0)  # the whole validation split
        final = {**result.last_eval, "tokens_per_sec": result.tokens_per_sec}
        if verbose:
            print(
                f"final: val loss {final['val_loss']:.4f} · val bits/byte {final['val_bpb']:.4f} "
                f"(whole validation split, {len(val_tokens):,} tokens)"
            )
    if not dist.main:
        return result
    png = finish_run(out, result, final, resume_hint=f"pocketgpt train --out {out} --resume", verbose=verbose)
    if verbose:
        print(f"loss curve: {png}")
        if not result.interrupted and run.train.samples:
            if dist.parallel == "fsdp":
                print(f"samples: skipped under fsdp (the weights are sharded); try pocketgpt generate {out}")
            else:
                print_samples(model, tokenizer, run, device)
    return result


def print_samples(model, tokenizer, run: TrainRun, device) -> None:
    from pocketgpt.config import SampleConfig
    from pocketgpt.generate.text import generate_text

    for i in range(run.train.samples):
        cfg = SampleConfig(max_new_tokens=run.train.sample_tokens, temperature=0.8, top_k=200, seed=run.train.seed + i)
        text = generate_text(model, tokenizer, "", cfg, device=device)  # float32: leaves the weights as they are
        print(f"--- sample {i + 1} ---\n{text}")
