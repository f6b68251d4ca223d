"""pocketgpt checkpoints as ONNX for onnxruntime (and, through it, C++, C#, Java, JavaScript and mobile).

    convert_to_onnx(CHECKPOINT, OUT/)   ->  OUT/model.onnx, OUT/config.json, OUT/pocketgpt_tokenizer.json

One graph does prefill and decode: inputs `input_ids` (batch, seq) and the KV cache `past_keys`, `past_values`
(n_layer, batch, n_head, past, head_dim), with past = 0 for the prefill; outputs `logits` (batch, seq, vocab) and
`present_keys`, `present_values` (n_layer, batch, n_head, past + seq, head_dim), which the next call takes as its
past. Batch, sequence and past are dynamic. Positions follow the cache (past .. past + seq - 1), so every
positional kind exports: learned, sinusoidal and RoPE, and every activation and qk_norm. Exported with
`torch.onnx.export(dynamo=True)` through the model's own modules (the cache is a small stand-in for KVCache
that concatenates instead of writing in place), then checked: onnxruntime must reproduce pocketgpt's logits
within 1e-4 on a prefill and on decode steps, or nothing is written (`export.json` records what was measured).
`pocketgpt.interop.onnx_runtime.OnnxGPT` decodes with the result. The folder is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pocketgpt.checkpoint import load_checkpoint, require_float
from pocketgpt.config_dicts import to_dict
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_dir
from pocketgpt.model import GPT
from pocketgpt.model.classifier import GPTClassifier

FORMAT = "pocketgpt-onnx"
TOLERANCE = 1e-4  # max |logit difference| onnxruntime may show against pocketgpt (float32)
INPUTS = ["input_ids", "past_keys", "past_values"]
OUTPUTS = ["logits", "present_keys", "present_values"]


class _ConcatCache:
    """What attention asks of a KV cache, functionally: `update` appends this layer's new keys and values to the
    past ones and returns them all; the stacked results are the graph's present_* outputs."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor):
        self.past_k, self.past_v = past_k, past_v
        self.pos = 1  # never 0: attention then uses the explicit mask it is given
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.cat([self.past_k[layer], k], dim=2)  # (B, nh, past + T, hs)
        v = torch.cat([self.past_v[layer], v], dim=2)
        self.keys.append(k)
        self.values.append(v)
        return k, v


class CachedStep(nn.Module):
    """model(input_ids, past_keys, past_values) -> (logits, present_keys, present_values): `GPT.hidden` + the head
    with the cache as tensors in and out (the steps and the modules are the model's own)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor):
        tr = self.model.transformer
        T, past = input_ids.shape[1], past_keys.shape[3]
        pos = torch.arange(T, device=input_ids.device) + past  # (T,)
        x = tr.wpe.add_to_input(tr.wte(input_ids), pos)  # 1) + 2)
        rot = tr.wpe.rotation(pos)
        q_slot = pos[:, None]  # (T, 1)
        k_slot = torch.arange(past + T, device=input_ids.device)[None, :]  # (1, past + T)
        mask = k_slot <= q_slot  # (T, past + T): causal over the cache and the new tokens
        cache = _ConcatCache(past_keys, past_values)
        for block in tr.h:  # 3) - 6)
            x = block(x, rot, cache, mask)
        logits = self.model.lm_head(tr.ln_f(x))  # 7)
        return logits, torch.stack(cache.keys), torch.stack(cache.values)


def empty_cache(cfg, batch: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    shape = (cfg.n_layer, batch, cfg.n_head, 0, cfg.head_dim)
    return np.zeros(shape, dtype), np.zeros(shape, dtype)


def _export(model: GPT, path: Path) -> None:
    import logging
    import warnings

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" and such

    cfg = model.config
    B, T, P = 2, 3, 5  # examples away from 0 and 1, which torch.export would specialise on
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    past = torch.zeros(cfg.n_layer, B, cfg.n_head, P, cfg.head_dim)
    batch, seq, plen = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    dynamic = {
        "input_ids": {0: batch, 1: seq},
        "past_keys": {1: batch, 3: plen},
        "past_values": {1: batch, 3: plen},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            CachedStep(model).eval(),
            (ids, past, past.clone()),
            str(path),
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def verify(folder: Path, model: GPT, *, steps: int = 4, seed: int = 0) -> dict:
    """Run onnxruntime and pocketgpt on the same random prompt (a prefill, then `steps` decode steps at batch 2)
    and return the largest logit difference of each; UserError when it exceeds TOLERANCE."""
    from pocketgpt.interop.onnx_runtime import OnnxGPT

    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    T = min(12, cfg.block_size - steps)
    ids = torch.randint(0, cfg.vocab_size, (2, T + steps), generator=g)
    runner = OnnxGPT(folder, check=False)
    with torch.no_grad():
        ref, _ = model.eval()(ids)  # (2, T + steps, V): the full forward, no cache
    ref = ref.numpy()
    logits, k, v = runner.step(ids[:, :T].numpy(), *empty_cache(cfg, 2))
    worst = {"prefill": float(np.abs(logits - ref[:, :T]).max()), "decode": 0.0}
    for s in range(steps):
        logits, k, v = runner.step(ids[:, T + s : T + s + 1].numpy(), k, v)
        worst["decode"] = max(worst["decode"], float(np.abs(logits[:, 0] - ref[:, T + s]).max()))
    worst["tolerance"] = TOLERANCE
    if max(worst["prefill"], worst["decode"]) > TOLERANCE:
        raise UserError(
            f"onnxruntime's logits differ from pocketgpt's by {max(worst['prefill'], worst['decode']):.2e} "
            f"(> {TOLERANCE:g}); not writing the export"
        )
    return worst


def convert_to_onnx(checkpoint: str | Path, out: str | Path) -> Path:
    """A pocketgpt checkpoint (or run folder) -> an ONNX folder at `out` (returned), verified with onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter)
    except ImportError:
        raise UserError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pocketgpt[export]'") from None
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output {out} already exists and is not empty: choose a new folder or remove it")
    ckpt = load_checkpoint(checkpoint)
    require_float(ckpt, "export to ONNX")
    model = ckpt.model.float().eval()
    if isinstance(model, GPTClassifier) or not isinstance(model, GPT):
        raise UserError(f"{checkpoint} is a {type(model).__name__} (a classifier): only language models export to ONNX")
    with atomic_dir(out) as tmp:
        _export(model, tmp / "model.onnx")
        meta = {"format": FORMAT, "model": to_dict(model.config), "inputs": INPUTS, "outputs": OUTPUTS}
        for key in ("converted_from",):
            if key in ckpt.meta:
                meta[key] = ckpt.meta[key]
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        ckpt.tokenizer.save(tmp)
        measured = verify(tmp, model)
        (tmp / "export.json").write_text(json.dumps({"max_abs_logit_difference": measured}, indent=2) + "\n")
    return out
