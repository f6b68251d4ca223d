"""Text in, text out: the one generation function for the CLI, the training samples and the Python API.

It frames the prompt as the model saw documents in training (after <|endoftext|>), crops it to the context
with a warning, runs the engine, and decodes. Streaming, batches and beams arrive with the engine's later work.
"""

from __future__ import annotations

import warnings

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate.engine import crop_prompt, generate_ids


def generate_text(model, tokenizer, prompt: str = "", sample: SampleConfig | None = None, *,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The continuation of `prompt` (without the prompt); stops at <|endoftext|> or sample.max_new_tokens.

    Bytes that do not form valid UTF-8 (a model can emit half a character) become U+FFFD, so the text prints.
    """
    sample = sample or SampleConfig()
    ids = [tokenizer.eot_id] + tokenizer.encode(prompt)
    context, cropped = crop_prompt(ids, model.config.block_size)
    if cropped:
        warnings.warn(f"prompt has {len(ids)} tokens, more than the context of {model.config.block_size} allows; "
                      f"keeping the last {len(context)}", stacklevel=2)
    new = list(generate_ids(model, context, sample, stop_ids=[tokenizer.eot_id], device=device, dtype=dtype))
    return tokenizer.decode_bytes(new).decode("utf-8", errors="replace")
