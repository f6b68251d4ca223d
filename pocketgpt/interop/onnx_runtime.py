"""Decoding an exported model with onnxruntime alone (no torch in the loop): the loop a C#, C++ or JS port copies.

    runner = OnnxGPT("out/onnx")                     # model.onnx + config.json + pocketgpt_tokenizer.json
    text = runner.generate_text("Once upon a time", max_new_tokens=40)             # greedy
    ids = runner.generate([[50256, 464, 3290]], max_new_tokens=20, temperature=0.8, seed=1)

The whole algorithm is: logits, K, V = step(prompt, empty cache); then repeatedly pick a token from the last
logits and run step(token, K, V). Greedy text equals pocketgpt's engine token for token (tested); sampling uses
numpy's seeded generator, so it repeats itself but not the engine's draws. The context is the model's
block_size: generation stops there (no sliding window).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pocketgpt.config import ModelConfig
from pocketgpt.config_dicts import from_dict
from pocketgpt.errors import UserError


class OnnxGPT:
    def __init__(self, folder: str | Path, *, threads: int | None = None, check: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("running an ONNX export needs onnxruntime: pip install 'pocketgpt[export]'") from None
        folder = Path(folder)
        if not (folder / "model.onnx").is_file():
            raise UserError(f"no model.onnx in {folder}: export one with pocketgpt convert --to-onnx CKPT {folder}")
        meta = json.loads((folder / "config.json").read_text())
        self.cfg: ModelConfig = from_dict(ModelConfig, meta["model"])
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.folder = folder
        self._tokenizer = None
        if check and (folder / "export.json").is_file():
            self.measured = json.loads((folder / "export.json").read_text())

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from pocketgpt.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.load(self.folder)
        return self._tokenizer

    def empty_cache(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.cfg.n_layer, batch, self.cfg.n_head, 0, self.cfg.head_dim)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def step(self, ids: np.ndarray, past_k: np.ndarray, past_v: np.ndarray):
        """Feed ids (B, T) after the cache; (logits (B, T, V), present_keys, present_values)."""
        return self.session.run(None, {"input_ids": ids.astype(np.int64), "past_keys": past_k, "past_values": past_v})

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int | None = None,
        stop_ids: tuple[int, ...] = (),
    ) -> list[list[int]]:
        """New tokens for each prompt (all of one length: batch rows decode in step). Greedy at temperature 0."""
        if not prompts or len({len(p) for p in prompts}) != 1 or not prompts[0]:
            raise UserError("give one or more non-empty prompts of the same length")
        rng = np.random.default_rng(seed)
        ids = np.array(prompts, dtype=np.int64)
        room = self.cfg.block_size - ids.shape[1]
        if room < 0:
            raise UserError(f"the prompt has {ids.shape[1]} tokens, more than the context of {self.cfg.block_size}")
        logits, k, v = self.step(ids, *self.empty_cache(len(prompts)))
        out: list[list[int]] = [[] for _ in prompts]
        alive = np.ones(len(prompts), dtype=bool)
        for _ in range(min(max_new_tokens, room)):
            last = logits[:, -1].astype(np.float64)  # (B, V)
            if temperature == 0:
                nxt = last.argmax(-1)
            else:
                z = last / temperature
                p = np.exp(z - z.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                nxt = np.array([rng.choice(len(row), p=row) for row in p])
            for b, t in enumerate(nxt.tolist()):
                if alive[b]:
                    if t in stop_ids:
                        alive[b] = False
                    else:
                        out[b].append(t)
            if not alive.any():
                break
            logits, k, v = self.step(nxt[:, None], k, v)
        return out

    def generate_text(self, prompt: str, *, bos: bool = True, **kw) -> str:
        """Encode (with <|endoftext|> first, as pocketgpt's generate does, unless bos=False), generate, decode."""
        tok = self.tokenizer
        ids = ([tok.eot_id] if bos else []) + tok.encode(prompt)
        return tok.decode(self.generate([ids], stop_ids=(tok.eot_id,), **kw)[0])
