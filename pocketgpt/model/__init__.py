"""The network: GPT and its parts. Imports only torch and pocketgpt.config."""

from pocketgpt.model.attention import attend
from pocketgpt.model.gpt import GPT, MLP, Block, CausalSelfAttention
from pocketgpt.model.kv_cache import KVCache
from pocketgpt.model.positional import POSITIONAL

__all__ = ["GPT", "Block", "CausalSelfAttention", "MLP", "KVCache", "POSITIONAL", "attend"]
