"""`ServeConfig`: everything `pocketgpt serve` needs besides the checkpoint (address, key, limits, precision,
speculative decoding, prefix cache, drain), one schema for Python, YAML and the `serve` flags. config.py re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pocketgpt.config_runtime import RuntimeConfig
from pocketgpt.config_runtime import check as _check
from pocketgpt.config_runtime import check_ints as _ints


@dataclass
class ServeConfig(RuntimeConfig):
    """Everything `pocketgpt serve` needs besides the checkpoint: where it listens and what one server accepts."""

    host: str = "127.0.0.1"
    """address to bind; the default is this machine only (0.0.0.0 exposes it to the network)"""
    port: int = 8000
    """TCP port, 1..65535"""
    api_key: str | None = None
    """require 'Authorization: Bearer KEY' on every /v1 route (the chat page asks for it); unset: no key"""
    model_name: str | None = None
    """the model id clients send; unset: the run folder's name"""
    max_batch: int = 8
    """sequences decoded together, one KV-cache row each"""
    max_queue: int = 64
    """sequences waiting for a row before new requests get 429"""
    max_tokens: int = 512
    """the most tokens one completion may generate (also the default of a request's max_tokens)"""
    max_prompt_tokens: int | None = None
    """longest prompt in tokens; unset: the model's context minus one"""
    max_body_bytes: int = 1 << 20
    """largest request body in bytes (413 beyond)"""
    max_n: int = 16
    """the most choices (n) one request may ask for"""
    kernels: Literal["auto", "linear", "mv", "split", "t", "packed"] = "auto"
    """batch-1 matmul kernel per weight shape: auto = the fastest measured on this machine at load (cached), or
    linear / mv / split / t everywhere"""
    quantize: Literal["none", "int8"] = "none"
    """int8: quantize the weights to int8 on load (no quality check; `pocketgpt quantize` checks and saves)"""
    speculative: Literal["off", "ngram", "draft"] = "off"
    """speculative decoding for every request (same output, fewer model passes): ngram (prompt lookup) or draft
    (the --draft model); each such request decodes on its own KV cache beside the batch"""
    draft: str | None = None
    """a smaller checkpoint with the same tokenizer, for speculative=draft"""
    draft_tokens: int = 4
    """tokens drafted per model pass when speculative (1..16)"""
    bos: bool | None = None
    """start text prompts (and chats) with <|endoftext|>; unset: what the checkpoint records (yes for models
    pocketgpt trained, no for checkpoints converted from Hugging Face)"""
    prefix_cache_mb: float = 256.0
    """memory for recent prompts' keys and values: a prompt that starts like one of them (a shared system prompt,
    a chat's earlier turns) prefills only the rest; 0 turns prefix caching off"""
    drain_timeout_s: float = 30.0
    """on SIGTERM / Ctrl-C: stop accepting connections, let requests in flight finish for up to this many seconds"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.bos in (None, True, False), f"bos must be true, false or unset, got {self.bos!r}")
        _check(
            isinstance(self.prefix_cache_mb, (int, float)) and 0 <= self.prefix_cache_mb < float("inf"),
            f"prefix_cache_mb must be a number >= 0, got {self.prefix_cache_mb!r}",
        )
        _check(
            isinstance(self.drain_timeout_s, (int, float)) and 0 <= self.drain_timeout_s < float("inf"),
            f"drain_timeout_s must be a number of seconds >= 0, got {self.drain_timeout_s!r}",
        )
        _check(
            self.speculative in ("off", "ngram", "draft"),
            f"speculative must be off, ngram or draft, got {self.speculative!r}",
        )
        _check(
            (self.speculative == "draft") == (self.draft is not None),
            "speculative=draft and draft=CHECKPOINT go together: give both, or neither",
        )
        _check(
            isinstance(self.draft_tokens, int) and 1 <= self.draft_tokens <= 16,
            f"draft_tokens must be in [1, 16], got {self.draft_tokens!r}",
        )
        h = self.host
        _check(isinstance(h, str) and h and h == h.strip(), f"host must be an address such as 127.0.0.1, got {h!r}")
        p = self.port
        _check(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535,
            f"port must be an integer in 1..65535, got {p!r}",
        )
        k = self.api_key
        if k is not None:  # the key itself never appears in a message
            _check(
                isinstance(k, str) and k != "", "api_key is empty: give a key, or leave it unset to serve without one"
            )
            _check(
                k.isascii() and k.isprintable() and " " not in k,
                f"api_key must be printable ASCII without spaces (the {len(k)}-character key given is not)",
            )
        m = self.model_name
        _check(m is None or (isinstance(m, str) and m.strip()), f"model_name must be a non-empty string, got {m!r}")
        _ints(self, ("max_batch", "max_queue", "max_tokens", "max_body_bytes", "max_n"), 1)
        v = self.max_prompt_tokens
        _check(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
            f"max_prompt_tokens must be a positive integer (or unset), got {v!r}",
        )
