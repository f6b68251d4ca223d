"""`pocketgpt quantize`: a float checkpoint -> an int8 weight-only checkpoint, written only if it passes a quality gate.

The gate evaluates bits per byte on held-out text before (the float model, float32, as `pocketgpt eval` does) and
after (the int8 model as the engine runs it: bf16 activations where native, float32 elsewhere), and the mean
KL divergence KL(float || int8) of the next-token distributions over the same targets. It refuses to write when
bpb rises by more than `max_bpb_increase`. Held-out text: the run's validation split (its config.yaml: the same
corpus, split and tokenizer as training, from the prepared cache when present), or `data` (a file, folder, glob or
.jsonl; what a converted checkpoint needs). The output is written atomically (fileio.atomic_dir).
What does not live here: the int8 layers (model/quant.py), the format (checkpoint.py), argv (cli/).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from pocketgpt.checkpoint import Checkpoint, load_checkpoint, write_checkpoint_files
from pocketgpt.config import TrainRun, from_dict
from pocketgpt.data.corpus import iter_documents, split_documents
from pocketgpt.data.prepare import Prepared, encode_documents, prepare_key
from pocketgpt.errors import UserError
from pocketgpt.evaluate import eval_windows, metrics_from_sums, window_sums
from pocketgpt.fileio import atomic_dir
from pocketgpt.generate.int8_kernels import choose_int8, int8_activation_dtype
from pocketgpt.model.quant import SCHEME, quantize_model

BITS = (8,)


@dataclass
class QuantizeResult:
    out: Path | None  # None: refused, nothing written
    bpb_float: float
    bpb_int8: float
    kl: float  # mean KL(float || int8) in nats per target token
    tokens: int
    source: str  # where the held-out text came from

    @property
    def delta_bpb(self) -> float:
        return self.bpb_int8 - self.bpb_float

    def line(self) -> str:
        return (
            f"bits/byte float {self.bpb_float:.4f} -> int8 {self.bpb_int8:.4f} (Δbpb {self.delta_bpb:+.4f}) · "
            f"mean KL(float || int8) {self.kl:.5f} nats/token · {self.tokens:,} tokens of {self.source}"
        )


def check_out(out: Path | str) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose another output folder")
    return out


def held_out_tokens(ckpt: Checkpoint, data: str | None) -> tuple[np.ndarray, str]:
    """Token ids of `data`, or of the validation split of the run the checkpoint belongs to; and a label."""
    tok = ckpt.tokenizer
    if data is not None:
        tokens = np.concatenate(list(encode_documents(iter_documents(data), tok)))
        return tokens, str(data)
    run_dir = ckpt.path.parent
    saved = None
    if (run_dir / "config.yaml").is_file():
        try:
            saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        except yaml.YAMLError:
            saved = None
    if not isinstance(saved, dict) or "corpus" not in saved or "task" in saved:
        raise UserError(
            f"{ckpt.path} is not in a pre-training run folder with a validation split: give --data FILE (held-out text)"
        )
    try:
        run = from_dict(TrainRun, saved)
    except (UserError, TypeError, ValueError) as e:
        raise UserError(
            f"{run_dir / 'config.yaml'} is not a training config this pocketgpt reads ({e}); give --data FILE"
        ) from None
    c = run.corpus
    cache = Path(run.cache_dir) if run.cache_dir else run_dir.resolve().parent / ".cache"
    label = f"the validation split of {run.data or 'the built-in corpus'}"
    try:
        key = prepare_key(
            run.data, tok, include_source=c.include_source, extensions=c.extensions, val_fraction=c.val_fraction
        )
        folder = cache / f"data-{key[:16]}"
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else None
        if isinstance(meta, dict) and meta.get("fingerprint") == key:  # prepared by the run: read, don't re-encode
            return np.asarray(Prepared(folder, meta).tokens("val")), label
        docs = iter_documents(run.data, include_source=c.include_source, extensions=c.extensions)
        _, val = split_documents(docs, c.val_fraction)
    except UserError as e:
        raise UserError(f"cannot read the run's validation split ({e}); give --data FILE") from None
    return np.concatenate(list(encode_documents(val, tok))), label


@torch.no_grad()
def compare(
    reference,
    candidate,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    *,
    max_tokens: int = 0,
    batch_size: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[dict, dict, float]:
    """bpb metrics of both models (evaluate.py's windows and sums) and the mean KL(reference || candidate) per target.
    batch_size 0: as many windows per forward as keep one logits tensor near 256 MB."""
    n = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise UserError(f"the held-out text holds {n} token(s): need at least 2 to evaluate")
    T, V = reference.config.block_size, reference.config.vocab_size
    batch_size = batch_size or max(1, min(16, (1 << 26) // (T * V)))
    tb = torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    groups = eval_windows(n, T, batch_size)
    sums = torch.zeros(2, len(groups), 4, dtype=torch.float64)
    kl_sum, kl_n = 0.0, 0
    reference.eval(), candidate.eval()
    for i, group in enumerate(groups):
        length = min(T, n - 1 - group[0])
        buf = torch.from_numpy(np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in group]))
        x, y = buf[:, :-1].to(device), buf[:, 1:]
        lp = []
        for j, model in enumerate((reference, candidate)):
            logits, _ = model(x)
            sums[j, i] = window_sums(logits, y, tb)
            lp.append(F.log_softmax(logits.float(), dim=-1))
        kl = F.kl_div(lp[1], lp[0], log_target=True, reduction="none").sum(-1)  # sum_v p (log p - log q)
        kl_sum += float(kl.double().sum())
        kl_n += kl.numel()
    return metrics_from_sums(sums[0]), metrics_from_sums(sums[1]), kl_sum / max(kl_n, 1)


def quantize_checkpoint(
    checkpoint: Path | str,
    out: Path | str,
    *,
    bits: int = 8,
    data: str | None = None,
    max_bpb_increase: float = 0.01,
    max_tokens: int = 65536,
    device: torch.device | str = "cpu",
    verbose: bool = True,
) -> QuantizeResult:
    """Quantize `checkpoint` to int8 and write it to `out` if bpb on held-out text rises by at most
    `max_bpb_increase`; else UserError and nothing written. `max_tokens`: evaluate at most this many targets (0 all)."""
    if bits not in BITS:
        raise UserError(f"--bits {bits} is not supported: int8 (--bits 8) is the one quantization there is")
    if not isinstance(max_bpb_increase, (int, float)) or math.isnan(max_bpb_increase):
        raise UserError(f"--max-bpb-increase must be a number, got {max_bpb_increase!r}")
    out = check_out(out)
    ckpt = load_checkpoint(checkpoint, device=device)
    meta = ckpt.meta
    if meta.get("quantized"):
        raise UserError(f"{ckpt.path} is quantized already")
    if meta.get("adapter"):
        raise UserError(f"{ckpt.path} is a LoRA adapter: merge it first (pocketgpt merge), then quantize the result")
    if meta.get("task") == "classify":
        raise UserError(f"{ckpt.path} is a classifier: quantize works on language models (bits per byte is its gate)")
    tokens, source = held_out_tokens(ckpt, data)

    float_model = ckpt.model
    int8_model = copy.deepcopy(float_model)
    quantize_model(int8_model)
    state = {k: v.detach().to("cpu", copy=True) for k, v in int8_model.state_dict().items()}  # float32 + int8
    int8_model.to(int8_activation_dtype(torch.device(device)))  # as the engine runs it: its dtype, its kernels
    choose_int8(int8_model)
    before, after, kl = compare(
        float_model, int8_model, tokens, ckpt.tokenizer.token_byte_lengths(), max_tokens=max_tokens, device=device
    )
    result = QuantizeResult(None, before["bpb"], after["bpb"], kl, after["tokens"], source)
    if verbose:
        print(result.line())
    if result.delta_bpb > max_bpb_increase:
        raise UserError(
            f"int8 raises bits/byte by {result.delta_bpb:+.4f} ({result.bpb_float:.4f} -> {result.bpb_int8:.4f}), more "
            f"than --max-bpb-increase {max_bpb_increase:g}: nothing written to {out}"
        )
    gate = {
        "data": source,
        "tokens": result.tokens,
        "bpb_float": result.bpb_float,
        "bpb_int8": result.bpb_int8,
        "kl": result.kl,
        "max_bpb_increase": max_bpb_increase,
    }
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "step")}
    extra.update(quantized=dict(SCHEME), quantized_from=str(ckpt.path), quantize_gate=gate)
    with atomic_dir(out) as tmp:
        write_checkpoint_files(
            tmp, int8_model, ckpt.tokenizer, step=int(meta.get("step", 0)), extra=extra, weights=state
        )
    result.out = out
    if verbose:
        print(f"wrote {out} (int8 weights, per-channel absmax scales)")
    return result
