"""Generation: prefill the prompt once into a KV cache, then decode one token per step.

`generate_ids` is the one entry point the CLI, training samples and later the server use; it takes and
yields token ids and knows nothing of strings, HTTP or argv. A prompt longer than the context keeps its
last tokens (the caller warns); generation stops at a stop token or after max_new_tokens, and when the
cache is full the window slides (the last block_size/2 tokens are re-prefilled).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.device import autocast
from pocketgpt.generate.sampling import pick
from pocketgpt.model import KVCache


def crop_prompt(ids: list[int], block_size: int) -> tuple[list[int], bool]:
    """The last block_size - 1 tokens of the prompt (room for one new token), and whether it was cropped."""
    limit = max(1, block_size - 1)
    return (ids[-limit:], True) if len(ids) > limit else (list(ids), False)


@torch.no_grad()
def generate_ids(model, prompt: list[int], sample: SampleConfig, *, stop_ids: Iterable[int] = (),
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Iterator[int]:
    """Yield new token ids one at a time; a stop token ends generation and is not yielded."""
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    device = torch.device(device)
    cfg = model.config
    stop = set(stop_ids)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(sample.seed if sample.seed is not None else torch.seed())
    context, _ = crop_prompt(list(prompt), cfg.block_size)
    model.eval()
    cache_dtype = dtype if dtype != torch.float32 else next(model.parameters()).dtype
    cache = KVCache(cfg, batch_size=1, dtype=cache_dtype, device=device)

    def forward(ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=device)
        with autocast(device, dtype):
            h = model.hidden(x, kv_cache=cache)                       # (1, T, C)
            return model.lm_head(h[:, -1, :]).float().cpu()           # (1, V): only the last position

    logits = forward(context)
    for _ in range(sample.max_new_tokens):
        tok = int(pick(logits, temperature=sample.temperature, top_k=sample.top_k, top_p=sample.top_p,
                       generator=gen)[0])
        if tok in stop:
            return
        yield tok
        context.append(tok)
        if cache.pos >= cfg.block_size:                               # cache full: slide the window
            context = context[-(cfg.block_size // 2):]
            cache.reset()
            logits = forward(context)
        else:
            logits = forward([tok])
