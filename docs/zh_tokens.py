"""How Chinese text tokenizes: UTF-8 bytes per character, tokens per character, characters per 1,024 tokens.

    nice -n 5 .venv/bin/python docs/zh_tokens.py --shared ../shared/data

Corpora (../shared/data/README.md): Tatoeba's English-Chinese pairs (modern sentences, and the same sentences in
English), 紅樓夢 (classical-vernacular prose, traditional characters), 唐诗三百首 (Tang verse, traditional), and
宋词三百首 + 诗经 + 论语 (classical verse and prose, simplified). Each is split into a training part and a held-out
part; every number below is measured on the held-out part.

Tokenizers, all loaded or trained through pocketgpt's `Tokenizer`: raw UTF-8 bytes (no merges), GPT-2's vocabulary
(`Tokenizer.from_gpt2_files`), byte-level BPEs trained with `Tokenizer.train` on the Chinese training parts at a few
vocabulary sizes, one trained on the English training part, and a character-level vocabulary (`kind="char"`).
Writes the tables of docs/chinese-tokenization.md (and docs/zh/chinese-tokenization.md) to stdout, then one
held-out sentence and its English token by token (id, the characters or character bytes it holds, its bytes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pocketgpt.tokenizer import Tokenizer

HELD_OUT = 10  # every 10th sentence / poem, or the last tenth of the novel's chapters, is held out
CONTEXT = 1024  # GPT-2's context length, in tokens


# ---- measuring -----------------------------------------------------------------------------------------------------


def is_cjk(c: str) -> bool:
    """A CJK unified ideograph (the basic block and extension A; compatibility ideographs)."""
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF


@dataclass
class Count:
    chars: int
    bytes: int
    tokens: int

    @property
    def bytes_per_char(self) -> float:
        return self.bytes / self.chars

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.chars

    @property
    def chars_per_context(self) -> float:
        """Characters of this text that fit in CONTEXT tokens."""
        return CONTEXT * self.chars / self.tokens


def count(tok: Tokenizer, docs: list[str]) -> Count:
    """Characters (code points), UTF-8 bytes and tokens of `docs`, each encoded on its own."""
    ids = tok.encode_batch(docs)
    return Count(
        chars=sum(len(d) for d in docs),
        bytes=sum(len(d.encode("utf-8")) for d in docs),
        tokens=sum(len(i) for i in ids),
    )


def single_token_chars(tok: Tokenizer) -> set[str]:
    """The CJK characters that are one whole token of `tok`'s vocabulary."""
    out = set()
    for i in range(tok.n_vocab):
        if i in tok.special_tokens.values():
            continue
        try:
            s = tok.decode_bytes([i]).decode("utf-8")
        except UnicodeDecodeError:
            continue  # a fragment of a character
        if len(s) == 1 and is_cjk(s):
            out.add(s)
    return out


def char_coverage(chars: set[str], docs: list[str]) -> float:
    """The share of CJK character occurrences in `docs` that are in `chars`."""
    seen = [c for d in docs for c in d if is_cjk(c)]
    return sum(c in chars for c in seen) / max(len(seen), 1)


def pieces(tok: Tokenizer, text: str) -> list[tuple[int, bytes, str]]:
    """(id, bytes, what the bytes are) of each token of `text`: the whole characters a token holds, quoted
    (`'我们'`, `' played'`), and for a character it holds only part of, which of its UTF-8 bytes
    (`我 (bytes 1-2 of 3)`)."""
    spans, pos = [], 0  # (first byte, end byte, character) of each character of `text`
    for c in text:
        n = len(c.encode("utf-8"))
        spans.append((pos, pos + n, c))
        pos += n
    out, pos = [], 0
    for i in tok.encode(text):
        b = tok.decode_bytes([i])
        end, parts, run = pos + len(b), [], ""
        for a, z, c in spans:
            if z <= pos or a >= end:
                continue
            lo, hi = max(a, pos) - a + 1, min(z, end) - a
            if (lo, hi) == (1, z - a):
                run += c
                continue
            if run:
                parts.append(repr(run))
                run = ""
            parts.append(f"{c} (byte {lo} of {z - a})" if lo == hi else f"{c} (bytes {lo}-{hi} of {z - a})")
        if run:
            parts.append(repr(run))
        out.append((i, b, " + ".join(parts)))
        pos = end
    return out


def show_pieces(toks: dict[str, Tokenizer], texts: list[str]) -> str:
    """Each text's tokens under each tokenizer: id, what the token's bytes are, the bytes in hex."""
    out = []
    for text in texts:
        for name, tok in toks.items():
            ps = pieces(tok, text)
            out += [f"{name}: {text!r}: {len(text)} characters, {len(text.encode())} bytes, {len(ps)} tokens", ""]
            out += ["    id  piece                 UTF-8 bytes"]
            out += [f"{i:>6}  {what:<21} {b.hex(' ')}" for i, b, what in ps]
            out.append("")
    return "\n".join(out)


# ---- the corpora ---------------------------------------------------------------------------------------------------


def split(items: list[str]) -> tuple[list[str], list[str]]:
    """Every HELD_OUT-th item held out, the rest for training."""
    return [x for i, x in enumerate(items) if i % HELD_OUT], items[::HELD_OUT]


def load_corpora(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (training docs, held-out docs)."""
    lines = (root / "tatoeba-cmn" / "cmn.txt").read_text(encoding="utf-8-sig").splitlines()
    pairs = [line.split("\t")[:2] for line in lines if line.count("\t") >= 2]
    corpora = {
        "modern (Tatoeba)": split([zh for _, zh in pairs]),
        "English (Tatoeba, same sentences)": split([en for en, _ in pairs]),
    }
    novel = (root / "zh" / "hongloumeng_pg24264.txt").read_text(encoding="utf-8")
    novel = "\n".join(line for line in novel.splitlines() if not line.startswith("----"))
    chapters = [
        c.replace("\n", "") for c in re.split(r"\n(?=第[一二三四五六七八九十百零〇]+回[　\n])", novel) if c.strip()
    ]
    cut = len(chapters) - len(chapters) // HELD_OUT
    corpora["紅樓夢 (prose, traditional)"] = (chapters[:cut], chapters[cut:])
    poetry = root / "zh" / "chinese-poetry"

    def poems(name: str, key: str) -> list[str]:
        return ["".join(p[key]) for p in json.loads((poetry / name).read_text(encoding="utf-8"))]

    corpora["唐诗三百首 (verse, traditional)"] = split(poems("唐诗三百首.json", "paragraphs"))
    corpora["宋词 + 诗经 + 论语 (simplified)"] = split(
        poems("宋词三百首.json", "paragraphs") + poems("shijing.json", "content") + poems("lunyu.json", "paragraphs")
    )
    return corpora


def tokenizers(corpora, gpt2: Path, vocab_sizes: list[int], char_vocab: int) -> dict[str, Tokenizer]:
    """name -> tokenizer: bytes, GPT-2, BPEs trained on the Chinese training parts, one on English, characters."""
    zh_train = [d for name, (train, _) in corpora.items() if not name.startswith("English") for d in train]
    en_train = corpora["English (Tatoeba, same sentences)"][0]
    out = {"UTF-8 bytes": Tokenizer.train([""], vocab_size=256 + 5), "GPT-2": Tokenizer.from_gpt2_files(gpt2)}
    for v in vocab_sizes:
        out[f"BPE zh {v // 1024}k"] = Tokenizer.train(zh_train, vocab_size=v)
    out["BPE en 8k"] = Tokenizer.train(en_train, vocab_size=8192)
    out[f"char zh {char_vocab // 1024}k"] = Tokenizer.train(zh_train, vocab_size=char_vocab, kind="char")
    return out


# ---- the report ----------------------------------------------------------------------------------------------------


def tables(corpora, toks: dict[str, Tokenizer]) -> str:
    counts = {(c, t): count(tok, held) for c, (_, held) in corpora.items() for t, tok in toks.items()}
    names = [t for t in toks if t != "UTF-8 bytes"]
    held_chars = {c: counts[c, "UTF-8 bytes"].chars for c in corpora}
    out = [
        "Tokens per character (held-out text; UTF-8 bytes per character in the bytes column):",
        "",
        "| text | characters | UTF-8 bytes | " + " | ".join(names) + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for c in corpora:
        cells = [f"{counts[c, t].tokens_per_char:.2f}" for t in names]
        out.append(
            f"| {c} | {held_chars[c]:,} | {counts[c, 'UTF-8 bytes'].bytes_per_char:.2f} | " + " | ".join(cells) + " |"
        )
    out += [
        "",
        f"Characters that fit in {CONTEXT:,} tokens:",
        "",
        "| text | UTF-8 bytes | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for c in corpora:
        cells = [f"{counts[c, t].chars_per_context:,.0f}" for t in ["UTF-8 bytes", *names]]
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    zh, en = "modern (Tatoeba)", "English (Tatoeba, same sentences)"
    out += [
        "",
        "The same Tatoeba sentences in Chinese and in English (held out): what one meaning costs in tokens:",
        "",
        "| tokenizer | Chinese tokens | English tokens | Chinese / English |",
        "|---|---:|---:|---:|",
    ]
    for t in ["UTF-8 bytes", *names]:
        a, b = counts[zh, t].tokens, counts[en, t].tokens
        out.append(f"| {t} | {a:,} | {b:,} | {a / b:.2f} |")
    if "BPE zh 8k" in toks:  # each language with a vocabulary trained on it, at the same size
        a, b = counts[zh, "BPE zh 8k"].tokens, counts[en, "BPE en 8k"].tokens
        out.append(f"| own-language 8k BPE (zh 8k / en 8k) | {a:,} | {b:,} | {a / b:.2f} |")
    out.append(f"| (characters) | {held_chars[zh]:,} | {held_chars[en]:,} | {held_chars[zh] / held_chars[en]:.2f} |")
    out += ["", "CJK characters that are one whole token, and the share of held-out CJK characters they cover:", ""]
    zh_docs = {c: held for c, (_, held) in corpora.items() if not c.startswith("English")}
    out += ["| tokenizer | single-token CJK characters | " + " | ".join(zh_docs) + " |"]
    out += ["|---|---:|" + "---:|" * len(zh_docs)]
    for t in names:
        if t.startswith("BPE en"):
            continue
        chars = single_token_chars(toks[t])
        cov = [f"{100 * char_coverage(chars, d):.0f}%" for d in zh_docs.values()]
        out.append(f"| {t} | {len(chars):,} | " + " | ".join(cov) + " |")
    return "\n".join(out)


EXAMPLE = ("我们昨天踢了足球。", "We played soccer yesterday.")  # a held-out Tatoeba pair


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default="../shared/data", help="the folder ../shared/data/README.md describes")
    p.add_argument("--vocab-sizes", default="2048,8192,32768", help="BPE vocabulary sizes to train on Chinese")
    p.add_argument("--char-vocab", type=int, default=8192, help="size of the character-level vocabulary")
    args = p.parse_args(argv)
    root = Path(args.shared)
    t0 = time.perf_counter()
    corpora = load_corpora(root)
    toks = tokenizers(corpora, root / "gpt2", [int(v) for v in args.vocab_sizes.split(",")], args.char_vocab)
    sizes = ", ".join(f"{c}: {len(tr):,} / {len(ho):,} docs" for c, (tr, ho) in corpora.items())
    print(f"{datetime.date.today().isoformat()}; `python docs/zh_tokens.py {' '.join(argv or sys.argv[1:])}`")
    print(f"Training / held-out documents: {sizes}\n")
    print(tables(corpora, toks))
    shown = {t: toks[t] for t in ("GPT-2", "BPE zh 8k") if t in toks}
    print(f"\nOne held-out sentence and its English, token by token:\n\n{show_pieces(shown, list(EXAMPLE))}")
    print(f"\n({time.perf_counter() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
