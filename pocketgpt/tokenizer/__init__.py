"""Tokenizers: text <-> token ids, with no torch anywhere in this package.

`Tokenizer` (bpe.py) trains byte-level BPE or char vocabularies, loads GPT-2 files, and
saves / loads its own JSON; special-token strings live in special.py. The chat template
is not here (tokenizer.chat renders conversations).
"""

from pocketgpt.tokenizer.bpe import Tokenizer
from pocketgpt.tokenizer.special import ASSISTANT, END, EOT, SPECIAL_TOKENS, SYSTEM, USER

load_tokenizer = Tokenizer.load

__all__ = ["Tokenizer", "load_tokenizer", "SPECIAL_TOKENS", "EOT", "SYSTEM", "USER", "ASSISTANT", "END"]
