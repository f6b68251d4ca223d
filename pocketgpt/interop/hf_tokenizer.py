"""Tokenizers in and out of Hugging Face GPT-2 folders.

Lives here: reading a GPT-2 tokenizer from an HF folder (vocab.json + merges.txt, OpenAI's
encoder.json + vocab.bpe, or a byte-level BPE tokenizer.json alone) into our `Tokenizer`, and writing
ours as the files `transformers.AutoTokenizer.from_pretrained(folder)` reads: vocab.json, merges.txt,
tokenizer.json (built with the `tokenizers` library, not by hand), tokenizer_config.json and
special_tokens_map.json. Not here: weights and model configs (`hf_gpt2.py`), encoding itself
(`pocketgpt.tokenizer`). Needs `tokenizers` (a core dependency), never `transformers`.

One deliberate difference of policy: our `Tokenizer.encode` treats special-token strings inside text as
plain text unless allowed, while Hugging Face tokenizers always turn them into the special id (so that
`text + tokenizer.eos_token` works, as HF users expect). The exported tokenizer keeps HF's convention:
it encodes like `encode(text, allowed_special="all")`; with `split_special_tokens=True` it encodes like
our default `encode(text)`. On text without special strings both agree token for token.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pocketgpt.errors import UserError
from pocketgpt.tokenizer import Tokenizer
from pocketgpt.tokenizer.bpe import GPT2_PATTERN
from pocketgpt.tokenizer.special import CHAT_TOKENS, EOT

FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
LOOKED_FOR = "vocab.json + merges.txt, encoder.json + vocab.bpe, or tokenizer.json"


# ---- in: HF folder -> Tokenizer ----------------------------------------------------------------


def load_hf_tokenizer(folder: Path | str) -> Tokenizer:
    """Our `Tokenizer` from a Hugging Face GPT-2 folder; vocabulary files win over tokenizer.json."""
    folder = Path(folder)
    if any((folder / v).is_file() and (folder / m).is_file() for v, m in FILE_PAIRS):
        return Tokenizer.from_gpt2_files(folder)
    if (folder / "tokenizer.json").is_file():
        return _from_tokenizer_json(folder / "tokenizer.json")
    raise UserError(f"no tokenizer in {folder}: looked for {LOOKED_FOR}")


def _from_tokenizer_json(path: Path) -> Tokenizer:
    """A byte-level BPE tokenizer.json (GPT-2 style) -> vocab.json + merges.txt in a temp folder -> Tokenizer."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise UserError(f"{path} has no 'model' section; expected a Hugging Face tokenizer.json")
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"{path}: model type {model.get('type')!r} is not supported; GPT-2 needs byte-level 'BPE'")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise UserError(f"{path}: pre_tokenizer {pre.get('type')!r} is not GPT-2's ByteLevel with its split regex")
    if pre.get("add_prefix_space"):
        raise UserError(f"{path}: pre_tokenizer add_prefix_space=true is not supported (GPT-2 uses false)")
    if spec.get("normalizer") is not None:
        raise UserError(f"{path}: a normalizer ({spec['normalizer'].get('type')!r}) is not supported by GPT-2 BPE")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UserError(f"{path}: BPE {key}={model[key]!r} is not supported by GPT-2 BPE")
    vocab = dict(model.get("vocab") or {})
    for added in spec.get("added_tokens") or []:
        content, i = added.get("content"), added.get("id")
        if vocab.setdefault(content, i) != i:
            raise UserError(f"{path}: added token {content!r} has id {i} but the vocabulary gives it {vocab[content]}")
    lines = ["#version: 0.2"]
    for m in model.get("merges") or []:
        pair = m.split(" ") if isinstance(m, str) else m
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise UserError(f"{path}: merge {m!r} is not a pair of tokens")
        lines.append(f"{pair[0]} {pair[1]}")
    with tempfile.TemporaryDirectory(prefix="pocketgpt-hf-tok-") as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return Tokenizer.from_gpt2_files(tmp)


# ---- out: Tokenizer -> HF files ----------------------------------------------------------------


def check_exportable(tok: Tokenizer) -> None:
    """UserError unless `tok` is a byte-level BPE with GPT-2's split pattern (what HF's GPT-2 tokenizer does)."""
    if tok.kind == "char":
        raise UserError("cannot export a char tokenizer to Hugging Face GPT-2: only byte-level BPE (bpe, gpt2) maps")
    if tok.pattern != GPT2_PATTERN:
        raise UserError(f"cannot export a tokenizer with split pattern {tok.pattern!r}: HF's ByteLevel uses GPT-2's")


def build_hf_tokenizer(vocab_json: Path, merges_txt: Path, special_tokens: dict[str, int]):
    """A `tokenizers.Tokenizer` equal to GPT-2's pipeline over these files, specials added as special tokens."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE.from_file(str(vocab_json), str(merges_txt)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)  # as GPT-2's own tokenizer.json
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special_tokens])
    got = {s: hf.token_to_id(s) for s in special_tokens}
    if got != dict(special_tokens):
        raise UserError(f"special tokens moved while building tokenizer.json: want {special_tokens}, got {got}")
    return hf


def save_hf_tokenizer(tok: Tokenizer, directory: Path | str, *, model_max_length: int) -> None:
    """Write vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    check_exportable(tok)
    out = Path(directory)
    tok.save_gpt2_files(out)  # vocab.json + merges.txt
    build_hf_tokenizer(out / "vocab.json", out / "merges.txt", tok.special_tokens).save(str(out / "tokenizer.json"))
    extra = [s for s in tok.special_tokens if s != EOT and s in CHAT_TOKENS]
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "additional_special_tokens": extra}
    config = {
        "tokenizer_class": "GPT2Tokenizer",  # AutoTokenizer builds the fast (tokenizers) class from it
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
