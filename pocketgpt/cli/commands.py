"""What each `pocketgpt` command does with its parsed flags: call one library function, format its result."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from pocketgpt.cli.fields import dataclass_from, resolve_bos, run_from_namespace
from pocketgpt.cli.report import print_kernels, print_speculation
from pocketgpt.config import CorpusConfig, RuntimeConfig, SampleConfig, TokenizerConfig
from pocketgpt.errors import UserError


def dispatch(ns) -> int:
    cmd = ns.command
    return {
        "train": cmd_train,
        "tokenizer": cmd_tokenizer,
        "prepare": cmd_prepare,
        "generate": cmd_generate,
        "eval": cmd_eval,
        "plot": cmd_plot,
        "convert": cmd_convert,
        "finetune": cmd_finetune,
        "classify": cmd_classify,
        "merge": cmd_merge,
        "chat": cmd_chat,
        "serve": cmd_serve,
        "quantize": cmd_quantize,
        "explain": cmd_explain,
    }[cmd](ns.get(cmd))


def cmd_train(ns) -> int:
    from pocketgpt.config import TrainRun
    from pocketgpt.train.pretrain import pretrain

    pretrain(run_from_namespace(ns, TrainRun), resume=bool(ns.resume))
    return 0


def cmd_tokenizer(ns) -> int:
    from pocketgpt.checkpoint import load_tokenizer

    action = ns.action
    sub = ns.get(action)
    if action == "train":
        from pocketgpt.data.corpus import iter_documents
        from pocketgpt.tokenizer import Tokenizer

        tcfg = dataclass_from(sub, TokenizerConfig)
        ccfg = dataclass_from(sub, CorpusConfig)
        docs = iter_documents(sub.data, include_source=ccfg.include_source, extensions=ccfg.extensions)
        tok = Tokenizer.train((d.text for d in docs), vocab_size=tcfg.vocab_size, kind=tcfg.kind)
        path = tok.save(sub.out)
        print(f"trained {tok.kind} tokenizer with {tok.n_vocab} tokens -> {path}")
        return 0
    tok = load_tokenizer(sub.tokenizer)
    if action == "encode":
        text = sub.text if sub.text is not None else sys.stdin.read()
        ids = tok.encode(text, allowed_special="all" if sub.allow_special else frozenset())
        print(" ".join(map(str, ids)))
        return 0
    raw = sub.ids if sub.ids is not None else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"--ids must be integers separated by spaces or commas, got {raw[:40]!r}") from None
    bad = [i for i in ids if not 0 <= i < tok.n_vocab]
    if bad:
        raise UserError(f"token id {bad[0]} is outside the vocabulary (0..{tok.n_vocab - 1})")
    sys.stdout.write(printable(tok.decode(ids)) + "\n")
    return 0


def printable(text: str) -> str:
    """Text safe to print: bytes that are not valid UTF-8 become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def cmd_prepare(ns) -> int:
    from pocketgpt.checkpoint import load_tokenizer
    from pocketgpt.data.prepare import prepare

    ccfg = dataclass_from(ns, CorpusConfig)
    prepare(
        ns.data,
        load_tokenizer(ns.tokenizer),
        ns.out,
        include_source=ccfg.include_source,
        extensions=ccfg.extensions,
        val_fraction=ccfg.val_fraction,
    )
    return 0


def _load(ns, verbose: bool = False):
    """The checkpoint on the device --device/--dtype/--threads ask for (RuntimeConfig; eval and classify have no
    --dtype and compute in float32), and that device and dtype."""
    from pocketgpt.checkpoint import load_checkpoint
    from pocketgpt.device import setup_runtime

    with contextlib.redirect_stdout(sys.stderr):  # -v: the device line on stderr, stdout keeps only the text
        device, dtype = setup_runtime(dataclass_from(ns, RuntimeConfig), verbose=verbose)
    return load_checkpoint(ns.checkpoint, device=device), device, dtype


def cmd_generate(ns) -> int:
    from pocketgpt.generate.text import TextGenerator

    sample = _speculative(ns, dataclass_from(ns, SampleConfig))
    if ns.stream and (sample.num_samples > 1 or sample.num_beams > 1):
        raise UserError("--stream prints one sequence: drop --num-samples / --beams, or drop --stream")
    ckpt, device, dtype = _load(ns, verbose=ns.verbose)
    if ns.quantize == "int8":
        from pocketgpt.model.quant import is_quantized, quantize_model

        if not is_quantized(ckpt.model):
            quantize_model(ckpt.model)
    draft = _load_draft(ns, ckpt, device)
    gen = TextGenerator(
        ckpt.model,
        ckpt.tokenizer,
        device=device,
        dtype=dtype,
        kernels=ns.kernels,
        draft=draft,
        bos=resolve_bos(ns, ckpt),
    )
    if ns.verbose:
        print_kernels(gen.engine, file=sys.stderr)
    if ns.stream:
        sys.stdout.write(printable(ns.prompt))
        for piece in gen.stream(ns.prompt, sample):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if ns.verbose and sample.speculative != "off":
            print_speculation(gen.engine.spec_stats, file=sys.stderr)
        return 0
    results = gen.complete([ns.prompt], sample)[0]
    for i, c in enumerate(results):
        if len(results) > 1:
            score = f" (score {c.score:.4f})" if c.score is not None else ""
            print(f"--- {'beam' if sample.num_beams > 1 else 'sample'} {i + 1}{score} ---")
        sys.stdout.write(printable(ns.prompt + c.text) + "\n")
    if ns.verbose and sample.speculative != "off":
        print_speculation(gen.engine.spec_stats, file=sys.stderr)
    return 0


def _speculative(ns, sample: SampleConfig) -> SampleConfig:
    """--draft CKPT implies --speculative draft; the two flags must agree."""
    if ns.draft is None:
        if sample.speculative == "draft":
            raise UserError("--speculative draft needs --draft CHECKPOINT (a smaller model with the same tokenizer)")
        return sample
    if sample.speculative == "ngram":
        raise UserError("--draft drafts with a model and --speculative ngram without one: drop one of them")
    return dataclasses.replace(sample, speculative="draft")


def _load_draft(ns, ckpt, device):
    """The --draft checkpoint's model, refused unless its tokenizer is the checkpoint's."""
    if ns.draft is None:
        return None
    from pocketgpt.checkpoint import load_checkpoint

    draft = load_checkpoint(ns.draft, device=device)
    if draft.tokenizer != ckpt.tokenizer:
        raise UserError(
            f"--draft {ns.draft} has another tokenizer than {ns.checkpoint}: a draft model must use the same one"
        )
    return draft.model


def cmd_eval(ns) -> int:
    from pocketgpt.data.corpus import iter_documents
    from pocketgpt.data.prepare import encode_documents
    from pocketgpt.evaluate import evaluate_tokens

    if ns.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {ns.batch_size}")
    if (ns.data is None) == (ns.tasks is None):
        raise UserError("give --data FILE (loss, perplexity, bits per byte) or --tasks NAMES (lm-evaluation-harness)")
    if ns.tasks is None and (ns.include_path or ns.limit is not None or ns.num_fewshot is not None):
        raise UserError("--include-path, --limit and --num-fewshot go with --tasks")
    ckpt, device, _ = _load(ns)
    if ns.tasks is not None:
        return _eval_tasks(ns, ckpt)
    from pocketgpt.generate.int8_kernels import choose_int8, int8_activation_dtype
    from pocketgpt.model.quant import is_quantized

    if is_quantized(ckpt.model):  # as the engine (and quantize's gate) run it: bf16 where native, its kernels
        ckpt.model.to(int8_activation_dtype(device))
        choose_int8(ckpt.model)
    tok = ckpt.tokenizer
    docs = list(encode_documents(iter_documents(ns.data), tok))  # each document after <|endoftext|>
    if not resolve_bos(ns, ckpt):
        docs = [d[1:] for d in docs]
    tokens = np.concatenate(docs)
    if len(tokens) < 2:
        raise UserError(f"{ns.data} holds too little text to evaluate")
    r = evaluate_tokens(ckpt.model, tokens, tok.token_byte_lengths(), batch_size=ns.batch_size, device=device)
    r = {"checkpoint": str(ckpt.path), "data": ns.data, **r}
    if not ns.json:
        print(
            f"loss {r['loss']:.4f} nats/token · perplexity {r['perplexity']:.2f} · {r['bpb']:.4f} bits/byte "
            f"over {r['tokens']:,} tokens ({r['bytes']:,} bytes)"
        )
    print(json.dumps(r))
    return 0


def _eval_tasks(ns, ckpt) -> int:
    from pocketgpt.harness import run_tasks

    tasks = [t.strip() for t in ns.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks is empty: name at least one lm-eval task")
    if ns.limit is not None and ns.limit < 1:
        raise UserError(f"--limit must be >= 1, got {ns.limit}")
    r = run_tasks(
        ckpt,
        tasks,
        include_path=ns.include_path,
        limit=ns.limit,
        num_fewshot=ns.num_fewshot,
        bos=ns.bos,
        batch_size=ns.batch_size,
    )
    if not ns.json:
        for task, metrics in r["results"].items():
            shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            print(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print(json.dumps({"checkpoint": str(ckpt.path), "tasks": tasks, **r}, default=str))
    return 0


def cmd_quantize(ns) -> int:
    from pocketgpt.device import pick_device, set_threads
    from pocketgpt.quantize import quantize_checkpoint

    runtime = dataclass_from(ns, RuntimeConfig)
    set_threads(runtime.threads)
    quantize_checkpoint(
        ns.checkpoint,
        ns.out,
        bits=ns.bits,
        data=ns.data,
        max_bpb_increase=ns.max_bpb_increase,
        max_tokens=ns.max_tokens,
        device=pick_device(runtime.device),
    )
    return 0


def cmd_plot(ns) -> int:
    from pocketgpt.plot import plot_run

    print(plot_run(Path(ns.run_dir), ns.out))
    return 0


def cmd_convert(ns) -> int:
    from pocketgpt.interop import convert_from_hf, convert_to_hf

    given = {
        k: v
        for k, v in (("from-hf", ns.from_hf), ("to-hf", ns.to_hf), ("to-gguf", ns.to_gguf), ("to-onnx", ns.to_onnx))
        if v is not None
    }
    if len(given) != 1:
        raise UserError(
            "give exactly one of --from-hf SOURCE, --to-hf CHECKPOINT, --to-gguf CHECKPOINT or --to-onnx CHECKPOINT"
        )
    if ns.gguf_type != "f32" and ns.to_gguf is None:
        raise UserError("--type applies to --to-gguf only")
    if ns.to_gguf is not None:
        from pocketgpt.interop.gguf_export import convert_to_gguf

        path = convert_to_gguf(ns.to_gguf, ns.out, dtype=ns.gguf_type)
    elif ns.to_onnx is not None:
        from pocketgpt.interop.onnx_export import convert_to_onnx

        path = convert_to_onnx(ns.to_onnx, ns.out)
    else:
        path = convert_from_hf(ns.from_hf, ns.out) if ns.from_hf else convert_to_hf(ns.to_hf, ns.out)
    print(f"wrote {path}")
    return 0


def cmd_finetune(ns) -> int:
    from pocketgpt.config import FinetuneRun
    from pocketgpt.finetune.run import finetune

    finetune(ns.checkpoint, run_from_namespace(ns, FinetuneRun), resume=bool(ns.resume))
    return 0


def cmd_classify(ns) -> int:
    from pocketgpt.finetune.classify import predict, read_column

    if bool(ns.text) == bool(ns.data):
        raise UserError("give --text TEXT (repeatable) or --data FILE, not both or neither")
    ckpt, device, _ = _load(ns)
    labels = ckpt.meta.get("labels")
    if ckpt.meta.get("task") != "classify" or not labels:
        raise UserError(f"{ckpt.path} has no classification head: fine-tune it with --task classify first")
    texts = list(ns.text) if ns.text else read_column(ns.data, ns.text_column)
    for text, r in zip(texts, predict(ckpt.model, ckpt.tokenizer, texts, labels, device=device)):
        if ns.json:
            print(json.dumps({"text": text, **r}, ensure_ascii=False))
        else:
            probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probs"].items())
            print(f"{r['label']}\t({probs})\t{text}")
    return 0


def cmd_merge(ns) -> int:
    from pocketgpt.finetune.merge import merge_checkpoint

    print(f"wrote {merge_checkpoint(ns.checkpoint, ns.adapter, ns.out)}")
    return 0


def cmd_explain(ns) -> int:
    from pocketgpt.cli.explain import run_explain

    return run_explain(ns)


def cmd_chat(ns) -> int:
    from pocketgpt.cli.chat import run_chat

    return run_chat(ns)


def cmd_serve(ns) -> int:
    from pocketgpt.config import ServeConfig

    cfg = dataclass_from(ns, ServeConfig)  # its checks name a bad flag before anything loads
    try:
        from pocketgpt.serve.server import serve
    except ImportError as e:
        raise UserError(f"serving needs the [serve] extra: pip install 'pocketgpt[serve]' ({e})") from None
    serve(ns.checkpoint, cfg)
    return 0
