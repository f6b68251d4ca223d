"""The character-level kind: training its vocabulary and encoding text with it.

Lives here: `train_char` (which non-ASCII characters get their own id) and `CharCodec`
(text -> ids). Not here: decoding, saving, special-token policy and the `Tokenizer` API,
which `bpe.py` shares across kinds.

Layout of a char vocabulary, as nanoGPT's Shakespeare example but exact for any text:
ids 0..255 are the raw bytes (so an ASCII character's id is its byte value), then one id per
distinct non-ASCII character kept from training (sorted by code point), then the specials.
A character without its own id falls back to its UTF-8 byte ids; a lone surrogate
U+DC80..U+DCFF (an invalid byte read with errors="surrogateescape") becomes that byte's id.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from pocketgpt.errors import UserError

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_NON_ASCII_RUN = re.compile(r"([^\x00-\x7f]+)")


def _is_surrogate(c: str) -> bool:
    return "\ud800" <= c <= "\udfff"


def _is_escaped_byte(c: str) -> bool:
    return "\udc80" <= c <= "\udcff"


def train_char(docs: Iterable[str], max_chars: int | None) -> list[bytes]:
    """Ordinary tokens (bytes per id) for a char vocabulary: 256 bytes + kept characters.

    `max_chars` bounds how many non-ASCII characters get their own id (the most frequent
    win; ties go to the lower code point); None keeps them all. One pass over `docs`.
    """
    counts: Counter[str] = Counter()
    for doc in docs:
        if not doc.isascii():
            counts.update(_NON_ASCII.findall(doc))
    bad = sorted(c for c in counts if _is_surrogate(c) and not _is_escaped_byte(c))
    if bad:
        raise UserError(
            f"training text holds lone surrogate(s) {bad[:5]!r}, which UTF-8 cannot encode; "
            "only U+DC80..U+DCFF (bytes escaped by errors='surrogateescape') are accepted"
        )
    chars = [c for c in counts if not _is_surrogate(c)]
    if max_chars is not None and len(chars) > max_chars:
        chars = sorted(chars, key=lambda c: (-counts[c], c))[:max_chars]
    chars.sort()
    return [bytes([b]) for b in range(256)] + [c.encode("utf-8") for c in chars]


class CharCodec:
    """Encodes text with a char vocabulary; `tokens` are the bytes per id (None = special)."""

    def __init__(self, tokens: list[bytes | None]):
        self._lut: dict[str, int] = {}
        for i, t in enumerate(tokens[256:], start=256):
            if t is None:
                continue
            try:
                c = t.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"char token {i} is not valid UTF-8: {t!r}") from None
            if len(c) != 1 or c.isascii():
                raise UserError(f"char token {i} must be one non-ASCII character, got {c!r}")
            if c in self._lut:
                raise UserError(f"char token {i} repeats {c!r} (already id {self._lut[c]})")
            self._lut[c] = i

    def encode(self, text: str, special: re.Pattern[str] | None, special_ids: dict[str, int]) -> list[int]:
        """`special` matches the allowed special strings (None: none allowed)."""
        if special is None:
            return self._plain(text)
        out: list[int] = []
        pos = 0
        for m in special.finditer(text):
            out += self._plain(text[pos : m.start()])
            out.append(special_ids[m.group()])
            pos = m.end()
        out += self._plain(text[pos:])
        return out

    def _plain(self, text: str) -> list[int]:
        if text.isascii():
            return list(text.encode("ascii"))  # fast path: an ASCII char's id is its byte
        lut = self._lut
        out: list[int] = []
        for k, part in enumerate(_NON_ASCII_RUN.split(text)):
            if k % 2 == 0:
                out += part.encode("ascii")  # extends with the byte values
                continue
            for c in part:
                i = lut.get(c)
                if i is None:  # unseen character or escaped byte: its UTF-8 byte ids
                    out += c.encode("utf-8", "surrogateescape")
                else:
                    out.append(i)
        return out
