"""docs/zh_tokens.py (docs/chinese-tokenization.md): the counting, on a few Chinese sentences the test writes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pocketgpt.tokenizer import Tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "zh_tokens.py"
SENTENCES = [
    "我们今天去公园散步。",
    "他每天早上喝一杯咖啡。",
    "这本书很有意思，我们都喜欢。",
    "今天天气很好，我们去公园吧。",
    "你明天早上有时间吗？",
    "我喜欢在公园里看书。",
]


@pytest.fixture(scope="module")
def zt():
    spec = importlib.util.spec_from_file_location("docs_zh_tokens", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    return Tokenizer.train([""], vocab_size=256 + 5)  # no merges: one token per UTF-8 byte


def test_a_cjk_character_is_three_utf8_bytes(zt, byte_tok):
    c = zt.count(byte_tok, ["中文", "汉字很美"])
    assert (c.chars, c.bytes, c.tokens) == (6, 18, 18)
    assert c.bytes_per_char == 3 and c.tokens_per_char == 3
    assert zt.count(byte_tok, ["abc"]).bytes_per_char == 1
    assert all(zt.is_cjk(ch) for ch in "中文漢字") and not any(zt.is_cjk(ch) for ch in "a，。1")


def test_tokens_per_char_and_context_are_computed_from_the_encoding(zt):
    tok = Tokenizer.train([" ".join(SENTENCES * 20)], vocab_size=256 + 5 + 40)
    docs = SENTENCES[:3]
    c = zt.count(tok, docs)
    assert c.chars == sum(len(d) for d in docs) == 35
    assert c.tokens == sum(len(tok.encode(d)) for d in docs)
    assert c.tokens_per_char == pytest.approx(c.tokens / 35)
    assert c.chars_per_context == pytest.approx(1024 * 35 / c.tokens)


def test_bpe_trained_on_chinese_needs_fewer_tokens_per_char_than_bytes(zt, byte_tok):
    train, held_out = SENTENCES[:-1], SENTENCES[-1:]
    tok = Tokenizer.train(["\n".join(train * 20)], vocab_size=256 + 5 + 60)
    raw, bpe = zt.count(byte_tok, held_out), zt.count(tok, held_out)
    assert raw.tokens_per_char == pytest.approx(raw.bytes_per_char)  # 我喜欢在公园里看书 + "。": 3 bytes each
    assert bpe.tokens_per_char < 0.8 * raw.tokens_per_char
    whole = zt.single_token_chars(tok)
    assert len(whole) > 5 and whole <= set("".join(train))  # merges made whole characters of the training text
    assert not zt.single_token_chars(byte_tok)  # bytes alone hold no CJK character
    assert zt.char_coverage({"公"}, ["公园。"]) == 0.5 and zt.char_coverage(set(), ["公园"]) == 0.0


def test_split_holds_out_every_tenth_item(zt):
    train, held = zt.split([str(i) for i in range(25)])
    assert held == ["0", "10", "20"] and len(train) == 22 and not set(train) & set(held)


def test_pieces_name_whole_characters_and_byte_fragments(zt, byte_tok):
    raw = zt.pieces(byte_tok, "我a")  # 我 = e6 88 91
    assert [(b, what) for _, b, what in raw] == [
        (b"\xe6", "我 (byte 1 of 3)"),
        (b"\x88", "我 (byte 2 of 3)"),
        (b"\x91", "我 (byte 3 of 3)"),
        (b"a", "'a'"),
    ]
    for merges in (60, 120):
        tok = Tokenizer.train(["\n".join(SENTENCES * 20)], vocab_size=256 + 5 + merges)
        ps = zt.pieces(tok, "我们去公园")
        assert b"".join(b for _, b, _ in ps) == "我们去公园".encode() and [i for i, _, _ in ps] == tok.encode(
            "我们去公园"
        )
        whole = "".join(w.strip("'") for _, _, what in ps for w in what.split(" + ") if w.startswith("'"))
        assert set(whole) <= set("我们去公园")
    assert [what for _, _, what in ps] == ["'我们去公园'"]  # 120 merges: the whole phrase is one token
    text = zt.show_pieces({"bytes": byte_tok}, ["我"])
    assert "3 bytes, 3 tokens" in text and "e6" in text
