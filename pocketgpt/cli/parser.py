"""The `pocketgpt` argument parser: one subcommand per command, each built from the config dataclasses.

Config flows as defaults < --preset < --config FILE.yaml < dotted flags (--model.n_layer 6); jsonargparse builds
the flags from the dataclasses in pocketgpt.config, so unknown keys and wrong types are errors naming the key.
"""

from typing import Optional

import jsonargparse
from jsonargparse import ActionConfigFile, ArgumentParser

from pocketgpt.cli.explain import explain_parser
from pocketgpt.cli.fields import add_bos_flag, add_dataclass_flags, add_kernel_flags, add_quantize_flag
from pocketgpt.config import (
    CorpusConfig,
    FinetuneRun,
    RuntimeConfig,
    SampleConfig,
    ServeConfig,
    TokenizerConfig,
    TrainRun,
    flatten,
    get_preset,
    preset_names,
)

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)

DESCRIPTION = "pocketgpt: train, fine-tune and run GPT models on a laptop CPU or a GPU."


def _scan(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in argv (either `--flag V` or `--flag=V`), read before the full parse."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _run_defaults(p: ArgumentParser, argv: list[str], presets: bool) -> None:
    """Defaults below flags: a preset, or (with --resume) the run's own saved config.yaml."""
    base: dict = {}
    preset = _scan(argv, "--preset") if presets else None
    if preset:
        base.update(flatten(get_preset(preset)))
    out = _scan(argv, "--out")
    if "--resume" in argv and out:
        from pocketgpt.train.run import saved_config  # the same config a resumed run gets from Python

        base.update(saved_config(out) or {})
    if base:
        p.set_defaults({k: tuple(v) if isinstance(v, list) else v for k, v in base.items()})


def run_parser(command: str, argv: list[str]) -> ArgumentParser:
    """The parser of a command that runs the training loop: `train` (TrainRun) or `finetune` (FinetuneRun)."""
    train = command == "train"
    p = ArgumentParser(
        prog=f"pocketgpt {command}",
        exit_on_error=False,
        description=(
            "Pre-train a GPT on raw text (the built-in corpus when --data is omitted)."
            if train
            else "Adapt a checkpoint to a task: continued LM, chat (loss on answers only) or classification, fully or "
            "with LoRA."
        ),
    )
    if train:
        p.add_argument(
            "--preset",
            type=Optional[str],
            default=None,
            help=f"start from a named preset: {', '.join(preset_names())} (then --config, then flags)",
        )
    else:
        p.add_argument("checkpoint", help="the checkpoint (or run folder) to start from")
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_class_arguments(TrainRun if train else FinetuneRun, None)
    _run_defaults(p, argv if argv and argv[0] == command else [], presets=train)
    return p


def build_parser(argv: list[str]) -> ArgumentParser:
    root = ArgumentParser(prog="pocketgpt", description=DESCRIPTION, exit_on_error=False)
    sub = root.add_subcommands(dest="command", required=True)

    sub.add_subcommand("train", run_parser("train", argv), help="pre-train a GPT on raw text")

    sub.add_subcommand(
        "finetune",
        run_parser("finetune", argv),
        help="fine-tune a checkpoint: --task lm | chat | classify, optionally with LoRA",
    )

    cl = ArgumentParser(exit_on_error=False, description="Label texts with a fine-tuned classifier.")
    cl.add_argument("checkpoint", help="a checkpoint fine-tuned with --task classify")
    cl.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    cl.add_argument(
        "--data", type=Optional[str], default=None, help="a CSV/TSV/JSONL file to classify (its text column)"
    )
    cl.add_argument(
        "--text-column", "--text_column", dest="text_column", type=str, default="text", help="the text column of --data"
    )
    cl.add_argument("--json", action="store_true", help="print one JSON object per text")
    add_dataclass_flags(cl, RuntimeConfig, skip={"dtype"})  # classifies in float32
    sub.add_subcommand("classify", cl, help="classify texts with a fine-tuned checkpoint")

    mg = ArgumentParser(exit_on_error=False, description="Fold a LoRA adapter into its base weights.")
    mg.add_argument("checkpoint", help="the base checkpoint the adapter was trained on")
    mg.add_argument("adapter", help="the LoRA run or checkpoint folder (adapter.safetensors)")
    mg.add_argument("out", help="folder to write the merged, plain checkpoint into")
    sub.add_subcommand("merge", mg, help="merge a LoRA adapter into a plain checkpoint")

    from pocketgpt.cli.chat import add_chat_arguments

    ch = ArgumentParser(exit_on_error=False, description="Talk to a chat-tuned checkpoint in the terminal.")
    add_chat_arguments(ch)
    sub.add_subcommand("chat", ch, help="a terminal chat with a checkpoint fine-tuned for chat")

    tok = ArgumentParser(exit_on_error=False, description="Train, or use, a tokenizer.")
    sub.add_subcommand("tokenizer", tok, help="train a tokenizer, encode or decode text")
    tsub = tok.add_subcommands(dest="action", required=True)
    tt = ArgumentParser(exit_on_error=False, description="Train a tokenizer on a corpus and save it.")
    tt.add_argument(
        "--data", type=Optional[str], default=None, help="corpus (file, folder, glob, .jsonl); default: built-in"
    )
    tt.add_argument("--out", type=str, required=True, help="folder to write pocketgpt_tokenizer.json into")
    add_dataclass_flags(tt, TokenizerConfig, skip={"path"})
    add_dataclass_flags(tt, CorpusConfig, skip={"val_fraction"})
    tsub.add_subcommand("train", tt, help="train a byte-level BPE or character tokenizer")
    te = ArgumentParser(exit_on_error=False, description="Print the token ids of a text.")
    te.add_argument("tokenizer", help="tokenizer folder/file, checkpoint, or GPT-2 vocabulary folder")
    te.add_argument("--text", type=Optional[str], default=None, help="text to encode (default: standard input)")
    te.add_argument("--allow-special", action="store_true", help="turn special-token strings into special tokens")
    tsub.add_subcommand("encode", te, help="text -> token ids")
    td = ArgumentParser(exit_on_error=False, description="Print the text of token ids.")
    td.add_argument("tokenizer", help="tokenizer folder/file, checkpoint, or GPT-2 vocabulary folder")
    td.add_argument(
        "--ids", type=Optional[str], default=None, help="ids separated by spaces or commas (default: stdin)"
    )
    tsub.add_subcommand("decode", td, help="token ids -> text")

    pr = ArgumentParser(exit_on_error=False, description="Tokenize a corpus into memory-mapped shards + meta.json.")
    pr.add_argument(
        "--data", type=Optional[str], default=None, help="corpus (file, folder, glob, .jsonl); default: built-in"
    )
    pr.add_argument("--tokenizer", type=str, required=True, help="tokenizer folder/file or checkpoint")
    pr.add_argument("--out", type=str, required=True, help="cache folder; the shards go in OUT/data-<hash>/")
    add_dataclass_flags(pr, CorpusConfig)
    sub.add_subcommand("prepare", pr, help="tokenize a corpus into token shards (cached)")

    ge = ArgumentParser(exit_on_error=False, description="Continue a prompt with a trained model.")
    ge.add_argument("checkpoint", help="checkpoint or run folder")
    ge.add_argument("--prompt", type=str, default="", help="text to continue (default: start from <|endoftext|>)")
    add_dataclass_flags(ge, SampleConfig, dashes=True, skip={"stop", "num_beams", "logprobs", "top_logprobs"})
    ge.add_argument(
        "--beams",
        "--num-beams",
        "--num_beams",
        dest="num_beams",
        type=int,
        default=1,
        help="beam search width; 1 is off (deterministic: do not combine with --temperature > 0)",
    )
    ge.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable); never printed")
    ge.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    ge.add_argument(
        "--draft",
        type=Optional[str],
        default=None,
        help="checkpoint of a smaller model with the same tokenizer that drafts tokens (implies --speculative draft)",
    )
    add_kernel_flags(ge)
    add_bos_flag(ge)
    add_quantize_flag(ge)
    add_dataclass_flags(ge, RuntimeConfig)
    sub.add_subcommand("generate", ge, help="generate text from a checkpoint")

    sv = ArgumentParser(
        exit_on_error=False,
        description=(
            "Serve a checkpoint over an OpenAI-compatible HTTP API (completions, chat, streaming) with continuous "
            "batching. Needs the [serve] extra (fastapi, uvicorn)."
        ),
    )
    sv.add_argument("checkpoint", help="checkpoint or run folder")
    add_dataclass_flags(sv, ServeConfig, dashes=True)  # --host, --port, --api-key, --max-batch, ... --device
    sub.add_subcommand("serve", sv, help="serve a checkpoint over an OpenAI-compatible HTTP API")

    ev = ArgumentParser(
        exit_on_error=False, description="Loss, perplexity and bits per byte of a checkpoint on a text."
    )
    ev.add_argument("checkpoint", help="checkpoint or run folder")
    ev.add_argument("--data", type=Optional[str], default=None, help="text to evaluate on (file, folder, glob, .jsonl)")
    ev.add_argument(
        "--tasks",
        type=Optional[str],
        default=None,
        help="lm-evaluation-harness tasks instead of --data, comma-separated (e.g. hellaswag,arc_easy,piqa; needs "
        "the lm-eval package: pip install 'pocketgpt[eval]')",
    )
    ev.add_argument(
        "--include-path",
        "--include_path",
        dest="include_path",
        type=Optional[str],
        default=None,
        help="with --tasks: a folder of lm-eval task YAML files to add to its registry",
    )
    ev.add_argument("--limit", type=Optional[int], default=None, help="with --tasks: at most this many examples each")
    ev.add_argument(
        "--num-fewshot",
        "--num_fewshot",
        dest="num_fewshot",
        type=Optional[int],
        default=None,
        help="with --tasks: few-shot examples (default: each task's own)",
    )
    add_bos_flag(ev)
    ev.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16, help="windows per forward")
    ev.add_argument("--json", action="store_true", help="print only the JSON line")
    add_dataclass_flags(ev, RuntimeConfig, skip={"dtype"})  # evaluates in float32
    sub.add_subcommand("eval", ev, help="evaluate a checkpoint on held-out text")

    cv = ArgumentParser(
        exit_on_error=False,
        description="Exchange checkpoints with Hugging Face transformers (GPT-2); export to GGUF (llama.cpp, "
        "Ollama, LM Studio) or ONNX (onnxruntime).",
    )
    for name, help_ in (
        ("from_hf", "a local transformers GPT-2 folder, or a Hub id such as gpt2 (needs network)"),
        ("to_hf", "a pocketgpt checkpoint or run folder to export"),
        ("to_gguf", "a pocketgpt checkpoint to export as one GGUF file for llama.cpp / Ollama (OUT ends in .gguf)"),
        (
            "to_onnx",
            "a pocketgpt checkpoint to export as ONNX (prefill.onnx + decode.onnx with the KV cache) for onnxruntime",
        ),
    ):  # each spelled --from-hf and --from_hf
        flag = "--" + name.replace("_", "-")
        cv.add_argument(flag, "--" + name, dest=name, type=Optional[str], default=None, help=help_)
    cv.add_argument(
        "--type",
        dest="gguf_type",
        type=str,
        default="f32",
        help="with --to-gguf: tensor type f32 | f16 | bf16 | q8_0 (norms and biases stay f32)",
    )
    cv.add_argument("out", help="what to write: a folder (must not exist, or be empty), or with --to-gguf a .gguf file")
    sub.add_subcommand(
        "convert", cv, help="convert checkpoints from / to Hugging Face GPT-2, or export them to GGUF or ONNX"
    )

    qz = ArgumentParser(
        exit_on_error=False,
        description="Quantize a checkpoint's weights to int8 (per output channel), checked on held-out text first: "
        "bits per byte before and after and KL(float || int8); refuses to write if bits per byte rise too much.",
    )
    qz.add_argument("checkpoint", help="checkpoint or run folder (float weights)")
    qz.add_argument("out", help="folder to write the int8 checkpoint into (must not exist, or be empty)")
    qz.add_argument("--bits", type=int, default=8, help="weight bits: 8 (the only one)")
    qz.add_argument(
        "--data",
        type=Optional[str],
        default=None,
        help="held-out text (file, folder, glob, .jsonl); default: the run's validation split (a converted "
        "checkpoint has none: give --data)",
    )
    qz.add_argument(
        "--max-bpb-increase",
        "--max_bpb_increase",
        dest="max_bpb_increase",
        type=float,
        default=0.01,
        help="refuse to write when int8 raises bits per byte by more than this",
    )
    qz.add_argument(
        "--max-tokens",
        "--max_tokens",
        dest="max_tokens",
        type=int,
        default=65536,
        help="evaluate at most this many held-out tokens (0 = all)",
    )
    add_dataclass_flags(qz, RuntimeConfig, skip={"dtype"})  # float32 before; int8 as the engine runs it
    sub.add_subcommand("quantize", qz, help="quantize a checkpoint to int8, gated on bits per byte")

    sub.add_subcommand("explain", explain_parser(), help="a prompt's tokens, next-token probabilities, attention maps")

    pl = ArgumentParser(exit_on_error=False, description="Draw loss.png from a run's metrics.jsonl.")
    pl.add_argument("run_dir", help="training run folder")
    pl.add_argument("--out", type=Optional[str], default=None, help="output PNG (default: RUN_DIR/loss.png)")
    sub.add_subcommand("plot", pl, help="plot a run's loss curve")
    return root
