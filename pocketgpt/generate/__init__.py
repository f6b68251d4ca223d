"""Generation: pure sampling functions and the engine that drives the model with a KV cache."""

from pocketgpt.generate.engine import crop_prompt, generate_ids
from pocketgpt.generate import sampling

__all__ = ["generate_ids", "crop_prompt", "sampling"]
