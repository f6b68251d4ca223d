"""The special tokens: the one place their strings are defined.

Lives here: the five special-token strings, their order, and the regex that finds the
allowed ones in a text. Not here: ids (each tokenizer assigns them: trained tokenizers put
all five after the ordinary tokens, in `SPECIAL_TOKENS` order; GPT-2 vocab files keep EOT at
50256 and get the chat roles only on request) and the chat template (`tokenizer.chat`).

A special string inside user text is ordinary text unless the caller allows it by name,
so a document containing "<|endoftext|>" cannot forge a document boundary.
"""

from __future__ import annotations

import re

EOT = "<|endoftext|>"  # end of a document; separates documents in pre-training data
SYSTEM = "<|system|>"  # starts the system turn of a chat
USER = "<|user|>"  # starts a user turn
ASSISTANT = "<|assistant|>"  # starts an assistant turn
END = "<|end|>"  # ends any chat turn

SPECIAL_TOKENS: tuple[str, ...] = (EOT, SYSTEM, USER, ASSISTANT, END)
CHAT_TOKENS: tuple[str, ...] = (SYSTEM, USER, ASSISTANT, END)


def special_regex(allowed: frozenset[str]) -> re.Pattern[str]:
    """A regex matching any of `allowed`, longest first so no token shadows a longer one."""
    ordered = sorted(allowed, key=lambda s: (-len(s), s))
    return re.compile("|".join(re.escape(s) for s in ordered))
