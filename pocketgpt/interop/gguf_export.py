"""pocketgpt checkpoints as GGUF files for llama.cpp, Ollama and LM Studio (architecture `gpt2`).

    convert_to_gguf(CHECKPOINT, "model.gguf", dtype="f32" | "f16" | "bf16" | "q8_0")

Written with `gguf` (the format's own Python library, from llama.cpp). What the `gpt2` architecture holds, and
so what exports: learned positions, LayerNorm (with or without bias: a bias-free model gets zero biases), GELU
(llama.cpp computes the tanh approximation; a model trained with exact GELU exports too, and the logits then
differ by what the two formulas differ: see docs/export.md for the measured tolerance), a tied or untied head,
any vocabulary size (the token list is padded with unused entries up to the embedding rows). Not expressible,
and refused with the way out: RoPE or sinusoidal positions, ReLU / ReLU^2, QK-norm, int8 checkpoints.

The file carries the tokenizer: byte-level BPE tokens in GPT-2's printable form, merges, token types (the
specials as control tokens), `tokenizer.ggml.pre = "gpt-2"` (pocketgpt's bpe and gpt2 kinds split text with
GPT-2's pattern), `<|endoftext|>` as BOS / EOS (pocketgpt starts prompts with it, so add_bos_token is true;
false for checkpoints converted from Hugging Face, whose tokenizer adds nothing) and, for chat checkpoints,
the chat template as Jinja with `<|end|>` as the end-of-turn token, so llama-server's /v1/chat/completions
formats a conversation the way pocketgpt does.

Tensors are laid out as llama.cpp's own convert_hf_to_gguf.py writes GPT-2: ggml dims are reversed numpy
dims, so our (out, in) nn.Linear weights go in unchanged. The file is written to a temp name beside OUT
and renamed into place: on any error nothing is left at OUT.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pocketgpt.checkpoint import load_checkpoint, require_float
from pocketgpt.config import ModelConfig
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_file
from pocketgpt.interop.hf_tokenizer import check_exportable
from pocketgpt.tokenizer.chat import TEMPLATE as CHAT_TEMPLATE_NAME
from pocketgpt.tokenizer.special import ASSISTANT, CHAT_TOKENS, END, EOT

TYPES = ("f32", "f16", "bf16", "q8_0")
ARCH = "gpt2"

# our state-dict key -> GGUF tensor name (llama.cpp's gguf-py TensorNameMap for MODEL_ARCH.GPT2)
NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.h.{i}.ln_1.weight": "blk.{i}.attn_norm.weight",
    "transformer.h.{i}.ln_1.bias": "blk.{i}.attn_norm.bias",
    "transformer.h.{i}.attn.c_attn.weight": "blk.{i}.attn_qkv.weight",
    "transformer.h.{i}.attn.c_attn.bias": "blk.{i}.attn_qkv.bias",
    "transformer.h.{i}.attn.c_proj.weight": "blk.{i}.attn_output.weight",
    "transformer.h.{i}.attn.c_proj.bias": "blk.{i}.attn_output.bias",
    "transformer.h.{i}.ln_2.weight": "blk.{i}.ffn_norm.weight",
    "transformer.h.{i}.ln_2.bias": "blk.{i}.ffn_norm.bias",
    "transformer.h.{i}.mlp.c_fc.weight": "blk.{i}.ffn_up.weight",
    "transformer.h.{i}.mlp.c_fc.bias": "blk.{i}.ffn_up.bias",
    "transformer.h.{i}.mlp.c_proj.weight": "blk.{i}.ffn_down.weight",
    "transformer.h.{i}.mlp.c_proj.bias": "blk.{i}.ffn_down.bias",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",  # written only when untied
}

# Jinja for llama.cpp's chat endpoint, rendering exactly tokenizer.chat's "pocketgpt-chat-v1" (the leading
# <|endoftext|> comes from add_bos_token): <|role|>content<|end|> per message, then <|assistant|>.
CHAT_JINJA = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def check_gguf_exportable(cfg: ModelConfig) -> None:
    """UserError naming any variant llama.cpp's gpt2 architecture cannot compute, and the way out."""
    way_out = "train or fine-tune with a GPT-2-compatible preset (learned positions, GELU, no qk_norm)"
    if cfg.pos_encoding != "learned":
        raise UserError(
            f"cannot export pos_encoding={cfg.pos_encoding!r} to GGUF: llama.cpp's gpt2 architecture has learned "
            f"positions only; {way_out}, or export to ONNX (convert --to-onnx), which runs every variant"
        )
    if cfg.activation not in ("gelu", "gelu_tanh"):
        raise UserError(
            f"cannot export activation={cfg.activation!r} to GGUF: llama.cpp's gpt2 architecture uses GELU; "
            f"{way_out}, or export to ONNX (convert --to-onnx)"
        )
    if cfg.qk_norm:
        raise UserError(
            "cannot export qk_norm=True to GGUF: llama.cpp's gpt2 attention has no query/key norm; "
            f"{way_out}, or export to ONNX (convert --to-onnx)"
        )


def check_gguf_model(model, where) -> None:
    """UserError for a model GGUF's gpt2 graph cannot hold: a classifier, or LoRA adapters left unmerged (their
    deltas are not in the base weights a GGUF file stores)."""
    from pocketgpt.model import GPT
    from pocketgpt.model.classifier import GPTClassifier
    from pocketgpt.model.lora import lora_modules

    if isinstance(model, GPTClassifier) or not isinstance(model, GPT):
        raise UserError(f"{where} is a {type(model).__name__} (a classifier): only language models export to GGUF")
    if lora_modules(model):
        raise UserError(
            f"{where} is a LoRA adapter left unmerged: fold it into the weights first with "
            "`pocketgpt merge BASE ADAPTER OUT`, then export OUT (or export to ONNX, which runs adapters as they are)"
        )


def _tokenizer_fields(tok, n_rows: int) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) in GGUF's gpt2 form; the list padded with unused [PADi] to n_rows."""
    import gguf

    check_exportable(tok)  # byte-level BPE with GPT-2's split pattern
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_gpt2_files(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text(encoding="utf-8"))
        merges = (Path(tmp) / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    by_id = {i: s for s, i in vocab.items()}
    if sorted(by_id) != list(range(tok.n_vocab)):
        raise UserError(f"the tokenizer's ids are not 0..{tok.n_vocab - 1} without gaps; GGUF needs a dense list")
    if tok.n_vocab > n_rows:
        raise UserError(f"the tokenizer has {tok.n_vocab} tokens but the model only {n_rows} embedding rows")
    special = set(tok.special_tokens.values())
    tokens = [by_id[i] for i in range(tok.n_vocab)]
    types = [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(tok.n_vocab)]
    for i in range(tok.n_vocab, n_rows):  # rows beyond the tokenizer (a vocabulary padded for speed)
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    return tokens, [m for m in merges if m], types


def _tensor(t: torch.Tensor, kind: str):
    """numpy data and its GGML type for one tensor: 1-D tensors (norms, biases) stay float32, as llama.cpp's
    converter keeps them; q8_0 is quantized with gguf's own reference implementation."""
    import gguf

    a = t.detach().float().cpu().numpy()
    if a.ndim == 1 or kind == "f32":
        return a, gguf.GGMLQuantizationType.F32
    if kind == "f16":
        return a.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    if kind == "q8_0" and a.shape[-1] % 32:
        return a.astype(np.float16), gguf.GGMLQuantizationType.F16  # q8_0 needs rows in blocks of 32
    return gguf.quants.quantize(a, qtype), qtype


def convert_to_gguf(checkpoint: str | Path, out: str | Path, *, dtype: str = "f32") -> Path:
    """A pocketgpt checkpoint (or run folder) -> one GGUF file at `out` (returned)."""
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the gguf package: pip install 'pocketgpt[export]'") from None
    if dtype not in TYPES:
        raise UserError(f"--type must be one of {', '.join(TYPES)}, got {dtype!r}")
    out = Path(out).expanduser()
    if out.suffix != ".gguf":
        raise UserError(f"output {out} must end in .gguf")
    if out.exists():
        raise UserError(f"output {out} already exists: choose a new name or remove it")
    ckpt = load_checkpoint(checkpoint)
    require_float(ckpt, "export to GGUF")
    model, tok = ckpt.model.float(), ckpt.tokenizer
    check_gguf_model(model, checkpoint)
    cfg = model.config
    check_gguf_exportable(cfg)
    tokens, merges, types = _tokenizer_fields(tok, cfg.vocab_size)

    state = model.state_dict()
    full = _full_shapes(cfg)
    tensors = []
    for ours, name in NAMES.items():
        for i in range(cfg.n_layer) if "{i}" in ours else [None]:
            key = ours.format(i=i)
            if key == "lm_head.weight" and cfg.tie_embeddings:
                continue  # llama.cpp ties output to token_embd when output.weight is absent
            t = state.get(key)
            if t is None:  # a bias a bias=False model lacks: zero, which is what it computes
                t = torch.zeros(full[key])
            tensors.append((name.format(i=i), *_tensor(t, dtype)))

    converted = str(ckpt.meta.get("converted_from", "")).startswith("huggingface")
    chat = all(s in tok.special_tokens for s in CHAT_TOKENS)

    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_name(Path(str(checkpoint)).name or "pocketgpt")
        w.add_string("general.source.url", "https://github.com/pocketgpt")
        w.add_file_type(
            {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
                dtype,
                gguf.LlamaFileType.MOSTLY_BF16 if dtype == "bf16" else gguf.LlamaFileType.MOSTLY_Q8_0,
            )
        )
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_eps)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tok.eot_id)
        w.add_eos_token_id(tok.special_tokens[END] if chat else tok.eot_id)
        w.add_add_bos_token(not converted)
        w.add_add_eos_token(False)
        if chat:
            w.add_eot_token_id(tok.special_tokens[END])
            w.add_chat_template(CHAT_JINJA)
            w.add_string("pocketgpt.chat_template", CHAT_TEMPLATE_NAME)
            w.add_string("pocketgpt.assistant_token", ASSISTANT)
        w.add_string("pocketgpt.activation", cfg.activation)
        w.add_string("pocketgpt.config", json.dumps(dataclasses.asdict(cfg)))
        w.add_string("pocketgpt.endoftext", EOT)
        for name, data, qtype in tensors:
            w.add_tensor(name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def _full_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    from pocketgpt.model import GPT

    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(dataclasses.replace(cfg, bias=True)).state_dict().items()}
