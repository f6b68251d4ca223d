"""Generation: pure sampling functions and the engine that drives the model with a KV cache."""

from pocketgpt.generate import sampling
from pocketgpt.generate.completion import Completion, crop_prompt
from pocketgpt.generate.engine import Engine, generate_ids

__all__ = ["Engine", "Completion", "generate_ids", "crop_prompt", "sampling"]
