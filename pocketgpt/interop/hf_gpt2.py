"""Hugging Face GPT-2 checkpoints in and out, with identical logits.

Lives here: the declarative weight map (RENAME: our state-dict key <-> HF `GPT2LMHeadModel` key, `{i}` for
the layer; TRANSPOSED: HF's Conv1D weights are stored (in, out), ours (out, in)), the config mapping both
ways, and the two folder converters:

    convert_from_hf("gpt2" | "openai-community/gpt2" | "path/to/hf_folder", OUT)
        OUT becomes a pocketgpt checkpoint folder itself (model.safetensors, config.json,
        pocketgpt_tokenizer.json), so `load_checkpoint(OUT)` and `pocketgpt generate OUT` read it.
    convert_to_hf(CHECKPOINT, OUT)
        OUT loads with `GPT2LMHeadModel.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`.

Both write into a hidden temp folder beside OUT and rename it into place at the end: on any error
nothing is left at OUT. Pickles (pytorch_model.bin) are read only with `torch.load(weights_only=True)`;
anything but plain tensors is refused, never executed.
Not here: HF names inside `pocketgpt.model` (none), tokenizer files (`hf_tokenizer.py`), argv. `transformers`
is never imported: only `huggingface_hub` (lazily, to download) and safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from pocketgpt.checkpoint import load_checkpoint, prompt_bos, require_float, write_checkpoint_files
from pocketgpt.config import ModelConfig
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_dir
from pocketgpt.interop.hf_files import read_hf_config, read_hf_weights, resolve_source  # noqa: F401
from pocketgpt.interop.hf_tokenizer import check_exportable, load_hf_tokenizer, save_hf_tokenizer
from pocketgpt.model import GPT

# ---- 1) the weight map -------------------------------------------------------------------------

RENAME: dict[str, str] = {  # pocketgpt key -> HF GPT2LMHeadModel key (identical by design: we use GPT-2's names)
    "transformer.wte.weight": "transformer.wte.weight",
    "transformer.wpe.weight": "transformer.wpe.weight",
    "transformer.h.{i}.ln_1.weight": "transformer.h.{i}.ln_1.weight",
    "transformer.h.{i}.ln_1.bias": "transformer.h.{i}.ln_1.bias",
    "transformer.h.{i}.attn.c_attn.weight": "transformer.h.{i}.attn.c_attn.weight",
    "transformer.h.{i}.attn.c_attn.bias": "transformer.h.{i}.attn.c_attn.bias",
    "transformer.h.{i}.attn.c_proj.weight": "transformer.h.{i}.attn.c_proj.weight",
    "transformer.h.{i}.attn.c_proj.bias": "transformer.h.{i}.attn.c_proj.bias",
    "transformer.h.{i}.ln_2.weight": "transformer.h.{i}.ln_2.weight",
    "transformer.h.{i}.ln_2.bias": "transformer.h.{i}.ln_2.bias",
    "transformer.h.{i}.mlp.c_fc.weight": "transformer.h.{i}.mlp.c_fc.weight",
    "transformer.h.{i}.mlp.c_fc.bias": "transformer.h.{i}.mlp.c_fc.bias",
    "transformer.h.{i}.mlp.c_proj.weight": "transformer.h.{i}.mlp.c_proj.weight",
    "transformer.h.{i}.mlp.c_proj.bias": "transformer.h.{i}.mlp.c_proj.bias",
    "transformer.ln_f.weight": "transformer.ln_f.weight",
    "transformer.ln_f.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",  # optional in HF files: tied to wte
}
TRANSPOSED: frozenset[str] = frozenset(
    {  # pocketgpt keys whose HF tensor is Conv1D (in, out)
        "transformer.h.{i}.attn.c_attn.weight",
        "transformer.h.{i}.attn.c_proj.weight",
        "transformer.h.{i}.mlp.c_fc.weight",
        "transformer.h.{i}.mlp.c_proj.weight",
    }
)
IGNORED: tuple[str, ...] = (  # HF keys older checkpoints carry: causal-mask buffers, not weights
    "transformer.h.{i}.attn.bias",
    "transformer.h.{i}.attn.masked_bias",
)
_IGNORED_RE = re.compile("|".join(re.escape(p).replace(re.escape("{i}"), r"\d+") for p in IGNORED))


def _pairs(n_layer: int) -> list[tuple[str, str, bool]]:
    """(our key, HF key, transposed) for every tensor of an n_layer model, in table order."""
    out = []
    for ours, hf in RENAME.items():
        layers = range(n_layer) if "{i}" in ours else [None]
        for i in layers:
            out.append((ours.format(i=i), hf.format(i=i), ours in TRANSPOSED))
    return out


def _shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Our state-dict shapes for `cfg`, from a model built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(cfg).state_dict().items()}


def _canonical_hf_key(key: str) -> str:
    """Hub files of `gpt2` say `h.0.attn...`, `wte.weight`; GPT2LMHeadModel says `transformer.h.0...`."""
    return key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key


def to_hf_state_dict(model: GPT, *, lm_head: bool = True) -> dict[str, torch.Tensor]:
    """Our model's weights under HF GPT2LMHeadModel names and layouts (bias=False -> zero biases)."""
    cfg = model.config
    config_to_hf(cfg)  # refuses what GPT-2 cannot hold
    ours = model.state_dict()
    full = _shapes(dataclasses.replace(cfg, bias=True))
    dtype = ours["transformer.wte.weight"].dtype
    out: dict[str, torch.Tensor] = {}
    for key, hf_key, transposed in _pairs(cfg.n_layer):
        if key == "lm_head.weight" and not lm_head:
            continue
        t = ours.get(key)
        if t is None:  # a bias our bias=False model lacks
            t = torch.zeros(full[key], dtype=dtype)
        t = t.detach().cpu()
        out[hf_key] = (t.t() if transposed else t).contiguous()
    return out


def from_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 weights (with or without the `transformer.` prefix) -> our state dict for `cfg`.

    Shapes are checked against `cfg` (the error names the tensor and both shapes); leftover tensors
    that are not GPT-2's are an error. With cfg.bias=False the HF biases must be zero and are dropped.
    """
    if cfg.pos_encoding != "learned":
        raise UserError(f"HF GPT-2 weights need pos_encoding='learned', got {cfg.pos_encoding!r}")
    hf: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        ck = _canonical_hf_key(k)
        if _IGNORED_RE.fullmatch(ck):
            continue
        if ck in hf:
            raise UserError(f"weights hold {ck!r} twice (with and without the 'transformer.' prefix)")
        hf[ck] = v
    shapes = _shapes(cfg)
    out: dict[str, torch.Tensor] = {}
    for key, hf_key, transposed in _pairs(cfg.n_layer):
        t = hf.pop(hf_key, None)
        if key == "lm_head.weight" and cfg.tie_embeddings:
            out[key] = out["transformer.wte.weight"]  # HF ties it on load too
            continue
        if t is None:
            raise UserError(f"weights lack the tensor {hf_key!r}")
        if key not in shapes:  # a bias our bias=False config drops
            if torch.count_nonzero(t):
                raise UserError(f"tensor {hf_key} is not zero, but the config has bias=False")
            continue
        want = shapes[key][::-1] if transposed else shapes[key]
        if tuple(t.shape) != tuple(want):
            raise UserError(f"tensor {hf_key} has shape {tuple(t.shape)}, but config.json implies {tuple(want)}")
        out[key] = (t.t() if transposed else t).contiguous()
    if hf:
        raise UserError(f"weights hold {len(hf)} tensor(s) GPT-2 does not have, e.g. {sorted(hf)[:3]}")
    return out


# ---- 2) the config map ---------------------------------------------------------------------------

ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
HF_DEFAULTS = {  # GPT2Config's defaults: a key missing from config.json means this value
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
# Options that change the function GPT-2 computes, and the value we can represent. reorder_and_upcast_attn
# is accepted: it only moves the 1/sqrt(d) scale onto K and upcasts to float32, the same math in float32.
_MATH_OPTIONS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}


def config_to_hf(cfg: ModelConfig, *, eot_id: int | None = None) -> dict:
    """A GPT2Config dict for `cfg`; UserError names any variant GPT-2 cannot represent."""
    if cfg.pos_encoding != "learned":
        raise UserError(
            f"cannot export pos_encoding={cfg.pos_encoding!r} to Hugging Face GPT-2, "
            "which has learned positions (wpe) only"
        )
    if not cfg.tie_embeddings:
        raise UserError(
            "cannot export tie_embeddings=False (an untied lm_head) to Hugging Face GPT-2, "
            "whose output head is the token embedding"
        )
    if cfg.activation not in ACT_TO_HF:
        raise UserError(
            f"cannot export activation={cfg.activation!r} to Hugging Face GPT-2: supported are {sorted(ACT_TO_HF)}"
        )
    if cfg.qk_norm:
        raise UserError("cannot export qk_norm=True to Hugging Face GPT-2, whose attention has no query/key norm")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner,
        "activation_function": ACT_TO_HF[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": "float32",
    }


def config_from_hf(d: Mapping) -> ModelConfig:
    """Our ModelConfig from a GPT2Config dict (config.json); UserError for anything we can't represent."""
    if not isinstance(d, Mapping):
        raise UserError(f"a Hugging Face config must be a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type is None and any(str(a).startswith("GPT2") for a in d.get("architectures") or []):
        model_type = "gpt2"  # very old configs lack model_type
    if model_type != "gpt2":
        raise UserError(f"not a GPT-2 checkpoint: model_type is {model_type!r}, expected 'gpt2'")
    g = {**HF_DEFAULTS, **{k: v for k, v in d.items() if k in HF_DEFAULTS}}
    for key, ok in _MATH_OPTIONS.items():
        if bool(g[key]) != ok:
            raise UserError(f"unsupported GPT-2 variant: {key}={g[key]!r} changes the math (pocketgpt needs {ok})")
    act = g["activation_function"]
    if act not in ACT_FROM_HF:
        raise UserError(f"unsupported GPT-2 variant: activation_function={act!r}; supported are {sorted(ACT_FROM_HF)}")
    return ModelConfig(
        n_layer=g["n_layer"],
        n_head=g["n_head"],
        n_embd=g["n_embd"],
        block_size=g["n_positions"],
        vocab_size=g["vocab_size"],
        n_inner=g["n_inner"],
        activation=ACT_FROM_HF[act],
        layer_norm_eps=float(g["layer_norm_epsilon"]),
        init_std=float(g["initializer_range"]),
        dropout=float(max(g["resid_pdrop"], g["embd_pdrop"], g["attn_pdrop"])),
        tie_embeddings=bool(g["tie_word_embeddings"]),
        bias=True,
        pos_encoding="learned",
    )


# ---- 3) the two converters (finding and reading an HF folder: hf_files.py) --------------------------------------------------------------------------


def _check_out(out: str | Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output {out} already exists and is not empty: choose a new folder or remove it")
    return out


def _prompt_bos(folder: Path, hf_config: dict) -> bool:
    """Whether the converted model's prompts start with <|endoftext|>: what pocketgpt recorded when it exported
    the folder (config.json's pocketgpt_prompt_bos), else what the tokenizer says (add_bos_token; GPT-2: false)."""
    if isinstance(hf_config.get("pocketgpt_prompt_bos"), bool):
        return hf_config["pocketgpt_prompt_bos"]
    try:
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(tc, dict) and tc.get("add_bos_token") is True


def convert_from_hf(source: str | Path, out: str | Path) -> Path:
    """A Hugging Face GPT-2 folder or Hub id -> a pocketgpt checkpoint folder at `out` (returned)."""
    out = _check_out(out)
    folder = resolve_source(source)
    hf_config = read_hf_config(folder)
    cfg = config_from_hf(hf_config)
    state = from_hf_state_dict(read_hf_weights(folder), cfg)
    tokenizer = load_hf_tokenizer(folder)
    if tokenizer.n_vocab > cfg.vocab_size:
        raise UserError(
            f"the tokenizer in {folder} has {tokenizer.n_vocab} tokens but config.json vocab_size is {cfg.vocab_size}"
        )
    model = GPT(cfg)
    model.load_state_dict(state)  # copies into float32 parameters
    with atomic_dir(out) as tmp:
        write_checkpoint_files(
            tmp,
            model.eval(),
            tokenizer,
            extra={"converted_from": f"huggingface-gpt2:{source}", "bos": _prompt_bos(folder, hf_config)},
        )
    return out


def convert_to_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """A pocketgpt checkpoint (or run folder) -> a Hugging Face GPT-2 folder at `out` (returned)."""
    out = _check_out(out)
    ckpt = load_checkpoint(checkpoint)
    require_float(ckpt, "export to Hugging Face")
    cfg, tokenizer = ckpt.model.config, ckpt.tokenizer
    hf_config = config_to_hf(cfg, eot_id=tokenizer.eot_id)
    hf_config["pocketgpt_prompt_bos"] = prompt_bos(ckpt)  # transformers keeps unknown keys; convert --from-hf reads it
    check_exportable(tokenizer)
    state = to_hf_state_dict(ckpt.model.float(), lm_head=False)  # HF re-ties lm_head to wte on load
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        gen = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        save_hf_tokenizer(tokenizer, tmp, model_max_length=cfg.block_size)
    return out
