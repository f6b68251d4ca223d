"""`Tokenizer`: train, encode, decode, save and load; GPT-2 vocabulary files load too.

Lives here: the one `Tokenizer` class for all three kinds ("bpe" trained byte-level BPE,
"char" characters, "gpt2" loaded GPT-2 files), the special-token policy, exact round trips
of any `str` (lone surrogates from errors="surrogateescape" included) and our JSON format.
Not here: the chat template (`tokenizer.chat`), char-kind details (`char.py`), reading and
writing GPT-2 files (`gpt2_files.py`), and anything torch: ids are `list[int]` or numpy.

No hand-written BPE: Hugging Face `tokenizers` learns the merges (fast, multi-threaded)
and `tiktoken` encodes with them. Ids of a trained BPE: 0..255 are the raw bytes, then the
merges in order (rank = id), then `SPECIAL_TOKENS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken

from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_write
from pocketgpt.tokenizer import gpt2_files
from pocketgpt.tokenizer.char import CharCodec, train_char
from pocketgpt.tokenizer.special import EOT, SPECIAL_TOKENS, special_regex

FORMAT = "pocketgpt-tokenizer"
VERSION = 1
FILENAME = "pocketgpt_tokenizer.json"
KINDS = ("bpe", "char", "gpt2")
# GPT-2's split pattern as tiktoken writes it (same splits as the original, faster).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

_SURROGATE = re.compile("[\ud800-\udfff]")
_BAD_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # not an escaped byte
_ESCAPED_RUN = re.compile("([\udc80-\udcff]+)")  # bytes escaped by errors="surrogateescape"
_cached_regex = lru_cache(maxsize=64)(special_regex)


def _check_surrogates(text: str) -> bool:
    """True if `text` holds escaped bytes (U+DC80..U+DCFF); UserError on other surrogates."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return False
    m = _BAD_SURROGATE.search(text)
    if m:
        raise UserError(
            f"text holds the lone surrogate {m.group()!r} at index {m.start()}, which UTF-8 cannot "
            "encode; only U+DC80..U+DCFF (bytes escaped by errors='surrogateescape') are accepted"
        )
    return True


def _documents(texts: Iterable[str]) -> Iterator[str]:
    if isinstance(texts, str):
        texts = [texts]
    for k, doc in enumerate(texts):
        if not isinstance(doc, str):
            raise UserError(f"training texts must be str; item {k} is {type(doc).__name__}")
        yield doc


def _bpe_pieces(docs: Iterable[str]) -> Iterator[str]:
    """Docs for the BPE trainer: escaped-byte runs are boundaries (as `encode` treats them)."""
    for doc in docs:
        if _check_surrogates(doc):
            yield from (p for k, p in enumerate(_ESCAPED_RUN.split(doc)) if k % 2 == 0 and p)
        else:
            yield doc


def _train_bpe(docs: Iterable[str], n_ordinary: int, progress: bool) -> list[bytes]:
    """Ordinary tokens: 256 bytes, then HF's merges in order (stops short -> UserError)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=n_ordinary,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=progress,
    )
    hf.train_from_iterator(_bpe_pieces(docs), trainer=trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]
    tokens = [bytes([b]) for b in range(256)]
    for m in merges:
        left, right = m.split(" ") if isinstance(m, str) else m
        tokens.append(gpt2_files.token_to_bytes(left) + gpt2_files.token_to_bytes(right))
    if len(tokens) < n_ordinary:
        have = len(tokens) + len(SPECIAL_TOKENS)
        raise UserError(
            f"training text too small for vocab_size={n_ordinary + len(SPECIAL_TOKENS)}: it yields "
            f"only {len(merges)} merges; add text or use vocab_size <= {have}"
        )
    return tokens


class Tokenizer:
    """Text <-> token ids. Build with `train`, `load` or `from_gpt2_files`.

    `kind`: "bpe" | "char" | "gpt2"; `n_vocab`: ids incl. specials (embedding rows needed);
    `special_tokens`: string -> id; `eot_id`: id of "<|endoftext|>".
    """

    def __init__(self, kind: str, tokens: list, special_tokens: dict, pattern=None, ranks=None):
        """Low level (validated). `tokens`: bytes per id, None at special ids; `ranks`: BPE
        priority per id (None where unused for encoding), or None meaning rank == id."""
        if kind not in KINDS:
            raise UserError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        if not all(t is None or isinstance(t, bytes) for t in tokens):
            raise UserError("tokens must be bytes (or None at special ids)")
        specials = dict(sorted(special_tokens.items(), key=lambda kv: kv[1]))
        n = len(tokens)
        for s, i in specials.items():
            if s not in SPECIAL_TOKENS or not isinstance(i, int) or not 0 <= i < n or tokens[i] is not None:
                raise UserError(f"special token {s!r} -> {i!r} is not a known special at a free id < {n}")
        if EOT not in specials or len(set(specials.values())) != len(specials):
            raise UserError(f"special tokens must hold {EOT!r} once each, got {specials}")
        if sum(t is None for t in tokens) != len(specials):
            raise UserError(f"{sum(t is None for t in tokens)} ids have no bytes but {len(specials)} are special")
        if (pattern is None) != (kind == "char"):
            raise UserError(f"a {kind} tokenizer {'takes no' if kind == 'char' else 'needs a'} split pattern")
        if kind != "gpt2" and (ranks is not None or tokens[:256] != [bytes([b]) for b in range(256)]):
            raise UserError(f"a {kind} tokenizer must have ids 0..255 = the raw bytes, ranks = ids")
        if ranks is not None and (
            len(ranks) != n
            or any(r is not None and (type(r) is not int or r < 0 or tokens[i] is None) for i, r in enumerate(ranks))
        ):
            raise UserError(f"ranks must be {n} entries: an int >= 0 or None per id, None at special ids")
        self.kind, self.pattern, self.n_vocab = kind, pattern, n
        self.special_tokens: dict[str, int] = specials
        self.eot_id: int = specials[EOT]
        self._tokens: list[bytes | None] = list(tokens)
        self._ranks: list[int | None] | None = None if ranks is None else list(ranks)
        self._table = [t if t is not None else b"" for t in tokens]  # bytes per id for decoding
        for s, i in specials.items():
            self._table[i] = s.encode("utf-8")
        self._all_special = frozenset(specials)
        self._fingerprint: str | None = None
        self._enc: tiktoken.Encoding | None = None
        self._rank_to_id: np.ndarray | None = None  # tiktoken id -> our id, when they differ
        self._direct = kind == "bpe" or (kind == "gpt2" and ranks is None)  # tiktoken ids are ours
        self._char = CharCodec(self._tokens) if kind == "char" else None
        self._byte_id = list(range(256))  # id of the single-byte token of each byte value
        if kind != "char":
            self._build_encoding()

    def _build_encoding(self) -> None:
        ranks = self.mergeable_ranks()
        used = self._ranks if self._ranks is not None else self._tokens
        if len(ranks) != sum(r is not None for r in used):
            raise UserError("two encodable tokens have the same bytes")
        if len(set(ranks.values())) != len(ranks):
            raise UserError("two tokens share one BPE rank")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise UserError(f"the vocabulary lacks single-byte tokens for bytes {missing[:8]}")
        specials = dict(self.special_tokens)
        if self._ranks is not None and any(r != i for i, r in enumerate(self._ranks) if r is not None):
            top = max(ranks.values()) + 1
            specials = {s: top + k for k, s in enumerate(self.special_tokens)}
            self._rank_to_id = np.full(top + len(specials), -1, dtype=np.int64)
            for i, r in enumerate(self._ranks):
                if r is not None:
                    self._rank_to_id[r] = i
            for s, i in self.special_tokens.items():
                self._rank_to_id[specials[s]] = i
        self._enc = tiktoken.Encoding(
            f"pocketgpt-{self.kind}", pat_str=self.pattern, mergeable_ranks=ranks, special_tokens=specials
        )
        to_id = self._rank_to_id
        self._byte_id = [ranks[bytes([b])] if to_id is None else int(to_id[ranks[bytes([b])]]) for b in range(256)]

    # ---- building ---------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None, kind: str = "bpe", *, progress: bool = False):
        """Learn a vocabulary from `texts` (an iterable of str, read once; one str = one doc).

        bpe: `vocab_size` is the exact n_vocab (specials included); a text too small to
        yield that many merges is a UserError. char: `vocab_size` is an upper bound (None: no
        bound); the most frequent non-ASCII characters get ids, the rest fall back to bytes.
        """
        if kind not in ("bpe", "char"):
            raise UserError(f"train kind must be 'bpe' or 'char' (GPT-2 files load with from_gpt2_files), got {kind!r}")
        least = 256 + len(SPECIAL_TOKENS)
        if kind == "bpe" or vocab_size is not None:
            if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < least:
                raise UserError(
                    f"vocab_size must be an int >= {least} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size!r}"
                )
        docs = _documents(texts)
        if kind == "char":
            tokens = train_char(docs, None if vocab_size is None else vocab_size - least)
            pattern = None
        else:
            tokens = _train_bpe(docs, vocab_size - len(SPECIAL_TOKENS), progress)
            pattern = GPT2_PATTERN
        specials = {s: len(tokens) + k for k, s in enumerate(SPECIAL_TOKENS)}
        return cls(kind, tokens + [None] * len(SPECIAL_TOKENS), specials, pattern)

    @classmethod
    def from_gpt2_files(cls, path, merges=None) -> Tokenizer:
        """GPT-2 vocabulary files: a folder holding encoder.json + vocab.bpe (OpenAI) or
        vocab.json + merges.txt (HF), a vocab file with its merges file beside it, or both
        paths. Encodes exactly as GPT-2. Only EOT is special (added after the last id if the
        file lacks it); `with_chat_specials()` adds the chat roles."""
        vocab_path, merges_path = gpt2_files.find_gpt2_files(path, merges)
        tokens, ranks, specials = gpt2_files.read_gpt2_files(vocab_path, merges_path)
        if EOT not in specials:
            specials[EOT] = len(tokens)
            tokens.append(None)
            ranks = None if ranks is None else [*ranks, None]
        return cls("gpt2", tokens, specials, GPT2_PATTERN, ranks)

    def with_chat_specials(self) -> Tokenizer:
        """This tokenizer plus any missing `SPECIAL_TOKENS`, appended after the last id."""
        missing = [s for s in SPECIAL_TOKENS if s not in self.special_tokens]
        if not missing:
            return self
        specials = {**self.special_tokens, **{s: self.n_vocab + k for k, s in enumerate(missing)}}
        ranks = None if self._ranks is None else self._ranks + [None] * len(missing)
        return Tokenizer(self.kind, self._tokens + [None] * len(missing), specials, self.pattern, ranks)

    # ---- encoding ---------------------------------------------------------------------

    def _allowed(self, allowed_special) -> frozenset[str]:
        if allowed_special is None:
            return frozenset()
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return self._all_special
            allowed_special = {allowed_special}  # one special's string: allow just that one
        allowed = frozenset(allowed_special)
        unknown = allowed - self._all_special
        if unknown:
            raise UserError(
                f"allowed_special names {sorted(unknown)}, which this tokenizer lacks; it has {list(self.special_tokens)}"
            )
        return allowed

    def _encode_clean(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Encode text free of surrogates."""
        if self._char is not None:
            regex = _cached_regex(allowed) if allowed else None
            return self._char.encode(text, regex, self.special_tokens)
        if self._rank_to_id is not None:
            ranks = self._enc.encode_to_numpy(text, allowed_special=allowed, disallowed_special=())
            return self._rank_to_id[ranks].tolist()
        if allowed:
            return self._enc.encode(text, allowed_special=allowed, disallowed_special=())
        return self._enc.encode_ordinary(text)

    def _encode_one(self, text: str, allowed: frozenset[str]) -> list[int]:
        if not isinstance(text, str):
            raise UserError(f"encode expects str, got {type(text).__name__}")
        if not _check_surrogates(text) or self._char is not None:  # char maps escaped bytes itself
            return self._encode_clean(text, allowed)
        ids: list[int] = []  # tiktoken can't take lone surrogates: escaped runs -> byte ids
        for k, part in enumerate(_ESCAPED_RUN.split(text)):
            if k % 2:
                ids += [self._byte_id[b] for b in part.encode("utf-8", "surrogateescape")]
            elif part:
                ids += self._encode_clean(part, allowed)
        return ids

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        """Ids for `text`. Special strings in it are ordinary text unless named in
        `allowed_special` (a set of them, or "all"). Exact inverse: `decode`."""
        return self._encode_one(text, self._allowed(allowed_special))

    def encode_batch(
        self, texts: list[str], allowed_special=frozenset(), num_threads: int | None = None
    ) -> list[list[int]]:
        """`encode` over many texts; BPE kinds run tiktoken on threads (it releases the GIL)."""
        if isinstance(texts, str):
            raise UserError("encode_batch expects a list of str, got one str (use encode)")
        texts = list(texts)
        allowed = self._allowed(allowed_special)
        threads = min(num_threads or 8, os.cpu_count() or 1, len(texts))
        if self._char is not None or threads < 2:
            return [self._encode_one(t, allowed) for t in texts]
        size = -(-len(texts) // (threads * 4))  # a few chunks per thread balance uneven texts
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        out: list[list[int]] = []
        with ThreadPoolExecutor(threads) as pool:
            for part in pool.map(lambda chunk: [self._encode_one(t, allowed) for t in chunk], chunks):
                out += part
        return out

    # ---- decoding ---------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        """The exact bytes of `ids` (list, tuple, numpy array); specials give their string."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        elif isinstance(ids, (int, str, bytes)):
            raise UserError(f"decode expects a sequence of token ids, got {type(ids).__name__} {ids!r:.40}")
        elif not isinstance(ids, (list, tuple)):
            ids = list(ids)
        if self._direct:
            try:
                return self._enc.decode_bytes(ids)
            except (KeyError, OverflowError, TypeError, ValueError):
                pass  # find and name the bad id below
        table = self._table
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            for k, i in enumerate(ids):
                if not isinstance(i, (int, np.integer)) or not 0 <= i < self.n_vocab:
                    raise UserError(f"token id {i!r} at position {k} is not in 0..{self.n_vocab - 1}") from None
            raise

    def decode(self, ids) -> str:
        """`decode_bytes` as str; invalid UTF-8 becomes lone surrogates (errors="surrogateescape"),
        so `decode(encode(s)) == s` for every str `encode` accepts."""
        return self.decode_bytes(ids).decode("utf-8", errors="surrogateescape")

    def token_byte_lengths(self) -> np.ndarray:
        """int32 UTF-8 byte length of each id, 0 for specials (for bits per byte)."""
        return np.array([0 if t is None else len(t) for t in self._tokens], dtype=np.int32)

    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> BPE rank, as tiktoken takes them (empty for the char kind)."""
        if self.kind == "char":
            return {}
        if self._ranks is None:
            return {t: i for i, t in enumerate(self._tokens) if t is not None}
        return {self._tokens[i]: r for i, r in enumerate(self._ranks) if r is not None}

    # ---- saving and loading -----------------------------------------------------------

    def _canonical(self) -> bytes:
        obj = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "ranks": self._ranks,  # null: rank == id for every ordinary token
            "tokens": [None if t is None else t.hex() for t in self._tokens],  # hex bytes, id order
        }
        return json.dumps(obj, indent=0, ensure_ascii=True).encode("ascii") + b"\n"

    def fingerprint(self) -> str:
        """sha256 hex of the saved file's content; equal tokenizers give equal fingerprints."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(self._canonical()).hexdigest()
        return self._fingerprint

    def save(self, directory) -> Path:
        """Write `directory/pocketgpt_tokenizer.json` atomically; returns its path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / FILENAME, self._canonical())
        return out / FILENAME

    def save_gpt2_files(self, directory) -> None:
        """Write `vocab.json` + `merges.txt` (GPT-2 / Hugging Face format) for a BPE kind."""
        if self.kind == "char":
            raise UserError("a char tokenizer has no merges to write as GPT-2 files")
        gpt2_files.write_gpt2_files(self._tokens, self.mergeable_ranks(), self.special_tokens, directory)

    @classmethod
    def load(cls, directory_or_file) -> Tokenizer:
        """Read what `save` wrote (a folder holding the file, or the file itself)."""
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise UserError(f"tokenizer file not found: {path}")
        try:
            obj = json.loads(path.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"tokenizer file {path} is not valid JSON: {e}") from None
        try:
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise UserError(f"format is not {FORMAT!r}")
            if obj.get("version") != VERSION:
                raise UserError(f"version {obj.get('version')!r} is not supported (this pocketgpt reads {VERSION})")
            tokens = [None if t is None else bytes.fromhex(t) for t in obj["tokens"]]
            return cls(obj["kind"], tokens, obj["special_tokens"], obj["pattern"], obj["ranks"])
        except (UserError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"tokenizer file {path} is corrupt: {type(e).__name__}: {e}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, n_vocab={self.n_vocab}, special_tokens={self.special_tokens})"
