"""Generation: pure sampling functions and the engine that drives the model with a KV cache."""

from pocketgpt.generate.completion import Completion, crop_prompt
from pocketgpt.generate.engine import Engine, generate_ids
from pocketgpt.generate import sampling

__all__ = ["Engine", "Completion", "generate_ids", "crop_prompt", "sampling"]
