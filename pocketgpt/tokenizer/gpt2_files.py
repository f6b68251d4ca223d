"""GPT-2 vocabulary files: reading and writing `vocab.json` + `merges.txt`.

Lives here: GPT-2's byte <-> unicode table, finding the two files (OpenAI's
`encoder.json` + `vocab.bpe` or Hugging Face's `vocab.json` + `merges.txt`), turning them into
token bytes per id plus BPE ranks (merge order), and writing a trained tokenizer back out in
that format (so `transformers.GPT2TokenizerFast.from_pretrained(folder)` reads it).
Not here: encoding (tiktoken does it, driven by `bpe.Tokenizer`) and our own JSON format.

Ranks: tiktoken merges the adjacent pair whose concatenation has the lowest rank, which
equals the merge-list rule of GPT-2 / Hugging Face when a token's rank is its merge's index.
Single-byte ranks are never compared, so when the files' ids grow in merge order (GPT-2's
do) the ids serve as ranks; otherwise ranks are bytes 0..255 then 256 + merge index, and
`Tokenizer` maps tiktoken's output back to the files' ids.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_write
from pocketgpt.tokenizer.special import SPECIAL_TOKENS

FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte -> a printable character (printable Latin-1 maps to itself)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_bytes(s: str) -> bytes | None:
    """A byte-level token string -> its bytes; None if it has a character outside the table."""
    u2b = unicode_to_bytes()
    try:
        return bytes(u2b[c] for c in s)
    except KeyError:
        return None


def bytes_to_token(b: bytes) -> str:
    b2u = bytes_to_unicode()
    return "".join(b2u[x] for x in b)


def find_gpt2_files(path, merges=None) -> tuple[Path, Path]:
    """(vocab json, merges text) from a folder, a vocab file (merges beside it) or both files."""
    if isinstance(path, (tuple, list)):
        if len(path) != 2 or merges is not None:
            raise UserError(f"give GPT-2 files as (vocab_json, merges_txt), got {path!r}")
        path, merges = path
    p = Path(path)
    if merges is not None:
        pair = (p, Path(merges))
    elif p.is_dir():
        found = [(p / v, p / m) for v, m in FILE_PAIRS if (p / v).is_file() and (p / m).is_file()]
        if not found:
            raise UserError(
                f"GPT-2 vocabulary not found in {p}: expected encoder.json + vocab.bpe (OpenAI) "
                "or vocab.json + merges.txt (Hugging Face)"
            )
        pair = found[0]
    else:
        partner = {"encoder.json": "vocab.bpe", "vocab.json": "merges.txt"}.get(p.name, "merges.txt")
        pair = (p, p.parent / partner)
    for f in pair:
        if not f.is_file():
            raise UserError(f"GPT-2 vocabulary file not found: {f}")
    return pair


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"GPT-2 vocab file {path} is not valid JSON: {e}") from None
    if not isinstance(vocab, dict) or not vocab:
        raise UserError(f"GPT-2 vocab file {path} must hold a non-empty JSON object token -> id")
    ids = list(vocab.values())
    bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
    if bad:
        raise UserError(f"GPT-2 vocab file {path} holds a non-integer id {bad[0]!r}")
    if sorted(ids) != list(range(len(ids))):
        raise UserError(
            f"GPT-2 vocab file {path}: ids must be exactly 0..{len(ids) - 1} with no gaps or repeats, "
            f"got min {min(ids)}, max {max(ids)}, {len(set(ids))} distinct"
        )
    return vocab


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"GPT-2 merges file {path} cannot be read as UTF-8 text: {e}") from None
    merges = []
    for n, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise UserError(f"GPT-2 merges file {path} line {n}: expected 'left right', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_gpt2_files(
    vocab_path: Path, merges_path: Path
) -> tuple[list[bytes | None], list[int | None] | None, dict[str, int]]:
    """-> (token bytes per id with None at specials, ranks per id or None = ids, specials).

    Vocab entries named like one of `SPECIAL_TOKENS` become specials; entries that are neither
    a byte nor a merge result (e.g. a "<pad>") decode but are never produced by encoding.
    """
    vocab = _read_vocab(vocab_path)
    merges = _read_merges(merges_path)
    tokens: list[bytes | None] = [None] * len(vocab)
    specials: dict[str, int] = {}
    for s, i in vocab.items():
        if s in SPECIAL_TOKENS:
            specials[s] = i
        else:
            b = token_to_bytes(s)
            tokens[i] = b if b is not None else s.encode("utf-8")
    b2u = bytes_to_unicode()
    byte_ids = []
    for b in range(256):
        if b2u[b] not in vocab:
            raise UserError(f"GPT-2 vocab file {vocab_path} lacks the byte token {b2u[b]!r} (byte {b})")
        byte_ids.append(vocab[b2u[b]])
    merge_ids: list[int] = []
    made: set[int] = set()
    for k, (left, right) in enumerate(merges):
        for part in (left, right, left + right):
            if part not in vocab or part in specials:
                raise UserError(
                    f"GPT-2 merges file {merges_path} merge {k} ({left!r} {right!r}): "
                    f"{part!r} is not an ordinary token of {vocab_path}"
                )
        i = vocab[left + right]
        if i in made or i in byte_ids:
            raise UserError(
                f"GPT-2 merges file {merges_path} merge {k} ({left!r} {right!r}) makes token {i} "
                "a second time; tiktoken's rule needs one merge per token"
            )
        made.add(i)
        merge_ids.append(i)
    encodable = set(byte_ids) | made
    if all(a < b for a, b in zip(merge_ids, merge_ids[1:])):  # ids already in merge order
        if len(encodable) == len(tokens) - len(specials):
            return tokens, None, specials
        ranks = [i if i in encodable else None for i in range(len(tokens))]
        return tokens, ranks, specials
    ranks = [None] * len(tokens)
    for b, i in enumerate(byte_ids):
        ranks[i] = b
    for k, i in enumerate(merge_ids):
        ranks[i] = 256 + k
    return tokens, ranks, specials


def recover_merges(mergeable: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The (left, right) pair of each multi-byte token, in rank order (for export only).

    A token's pair is what its own bytes become under the merges ranked before it
    (tiktoken's `_educational` does the same); anything but two parts is an error.
    """
    pairs = []
    for token, rank in sorted(((t, r) for t, r in mergeable.items() if len(t) > 1), key=lambda x: x[1]):
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None  # (rank, index) of the best adjacent pair ranked below `rank`
            for i in range(len(parts) - 1):
                r = mergeable.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise UserError(f"token {token!r} (rank {rank}) is not the merge of two earlier tokens")
        pairs.append((parts[0], parts[1]))
    return pairs


def write_gpt2_files(
    tokens: list[bytes | None], mergeable: dict[bytes, int], specials: dict[str, int], directory
) -> None:
    """Write `vocab.json` + `merges.txt` (Hugging Face names) for a byte-level BPE vocabulary."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = {s: i for i, s in sorted((i, s) for s, i in specials.items())}
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t is None:
            continue
        name = bytes_to_token(t)
        if name in vocab or name in names:
            raise UserError(f"token {i} ({t!r}) has the same GPT-2 name {name!r} as another token")
        vocab[name] = i
    vocab.update(names)
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    lines = ["#version: 0.2"]
    lines += [f"{bytes_to_token(a)} {bytes_to_token(b)}" for a, b in recover_merges(mergeable)]
    atomic_write(out / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    atomic_write(out / "merges.txt", ("\n".join(lines) + "\n").encode("utf-8"))
