"""Tests for pocketgpt.tokenizer: round trips, training, specials, save/load, GPT-2 files.

Vocabularies are trained here on text the test writes (tiny, seconds); nothing is read from
../shared except one skip-if-absent check against GPT-2's real files.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from pocketgpt.errors import UserError
from pocketgpt.tokenizer import EOT, SPECIAL_TOKENS, Tokenizer, load_tokenizer
from pocketgpt.tokenizer.special import ASSISTANT, END, SYSTEM, USER

GPT2_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/gpt2"

WORDS = (
    "the quick brown fox jumps over the lazy dog and it's what we've said they're here I'm "
    'def return import numpy as np for i in range(10): print(i) x = [1, 2, 3] {"a": 1} '
    "1234567 3.14159 2024-01-01 naïve café résumé Straße Ωμέγα Привет мир مرحبا بالعالم "
    "日本語のテキスト 中文字符测试 你好世界 한국어 😀 👍🏽 👩‍👩‍👧‍👦 🇫🇷 ✓ → ∑ ∞"
).split(" ")


def make_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    seps = [" ", " ", " ", "  ", "\n", "\n\n", "\t", ", ", ". ", "\r\n", "   "]
    return "".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(n_words))


CORPUS = make_text(6000, seed=0)  # ~40 KB to train on
HELD_OUT = make_text(4000, seed=1)  # different text to compare encoders on
ESCAPED = b"ok \xff\xfe bad \xc3".decode("utf-8", "surrogateescape")

ROUND_TRIP = {
    "empty": "",
    "one_char": "a",
    "one_space": " ",
    "emoji": "😀",
    "zwj_family": "👩‍👩‍👧‍👦",
    "skin_tone": "👍🏽 👋🏿",
    "mixed_scripts": "Hello, 世界! Привет мир. مرحبا naïve",
    "chinese": "中文字符测试，这是一个句子。",
    "whitespace_runs": "a   \t\t  \n\n\n   b    ",
    "crlf": "line1\r\nline2\r\n\r\n",
    "nul": "\x00",
    "nul_inside": "a\x00b\x00\x00c",
    "contractions": "it's we've they're I'M 'll",
    "escaped_bytes": ESCAPED,
    "escaped_edges": "\udcff start and end \udc80",
    "all_bytes": bytes(range(256)).decode("utf-8", "surrogateescape"),
    "bad_utf8_mix": b"\xe4\xbd\xa0\xe5 \xf0\x9f\x98 ok".decode("utf-8", "surrogateescape"),
    "specials_as_text": "a <|endoftext|> b <|user|>hi<|end|> <|assistant|><|system|>",
    "long_100kb": make_text(16000, seed=2)[:100_000],
}


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train(CORPUS.split("\n\n"), vocab_size=512)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train(iter(CORPUS.split("\n")), vocab_size=None, kind="char")


@pytest.fixture(scope="module")
def gpt2_dir(bpe, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2_export")
    bpe.save_gpt2_files(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2(gpt2_dir) -> Tokenizer:
    return Tokenizer.from_gpt2_files(gpt2_dir)


@pytest.fixture(scope="module")
def permuted_dir(gpt2_dir, tmp_path_factory) -> Path:
    """The exported vocabulary with shuffled ids (not in merge order), EOT moved to id 0."""
    vocab = json.loads((gpt2_dir / "vocab.json").read_text(encoding="utf-8"))
    names = [n for n in vocab if n not in SPECIAL_TOKENS]
    random.Random(3).shuffle(names)
    folder = tmp_path_factory.mktemp("gpt2_permuted")
    shuffled = {EOT: 0, **{n: i + 1 for i, n in enumerate(names)}}
    (folder / "vocab.json").write_text(json.dumps(shuffled), encoding="utf-8")
    shutil.copy(gpt2_dir / "merges.txt", folder / "merges.txt")
    return folder


def hf_encode(folder: Path, texts: list[str]) -> list[list[int]]:
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
    return [hf.encode(t) for t in texts]


@pytest.fixture(params=["bpe", "char", "gpt2"])
def any_tok(request) -> Tokenizer:
    return request.getfixturevalue(request.param)


# ---- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ROUND_TRIP))
@pytest.mark.parametrize("kind", ["bpe", "char", "gpt2"])
def test_round_trip(kind, name, request):
    tok = request.getfixturevalue(kind)
    text = ROUND_TRIP[name]
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.n_vocab for i in ids)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8", "surrogateescape")


def test_encode_batch_equals_encode(any_tok):
    texts = list(ROUND_TRIP.values()) * 3
    assert any_tok.encode_batch(texts) == [any_tok.encode(t) for t in texts]
    assert any_tok.encode_batch(texts, "all") == [any_tok.encode(t, "all") for t in texts]
    assert any_tok.encode_batch([]) == []


def test_decode_accepts_numpy(any_tok):
    ids = any_tok.encode(ROUND_TRIP["mixed_scripts"])
    assert any_tok.decode(np.array(ids, dtype=np.uint16)) == ROUND_TRIP["mixed_scripts"]
    assert any_tok.decode(tuple(ids)) == ROUND_TRIP["mixed_scripts"]


def test_bad_input_raises_user_error(any_tok):
    with pytest.raises(UserError, match="surrogate"):
        any_tok.encode("a\ud800b")  # not an escaped byte: UTF-8 cannot hold it
    with pytest.raises(UserError, match="str"):
        any_tok.encode(b"bytes")
    with pytest.raises(UserError, match=str(any_tok.n_vocab + 5)):
        any_tok.decode([1, any_tok.n_vocab + 5])
    with pytest.raises(UserError, match="-1"):
        any_tok.decode([1, -1])


# ---- training -------------------------------------------------------------------------


def test_bpe_layout_and_exact_vocab_size(bpe):
    assert bpe.kind == "bpe" and bpe.n_vocab == 512
    assert list(bpe.special_tokens) == list(SPECIAL_TOKENS)
    assert list(bpe.special_tokens.values()) == list(range(512 - len(SPECIAL_TOKENS), 512))
    assert bpe.eot_id == 507
    assert [bpe.decode_bytes([b]) for b in range(256)] == [bytes([b]) for b in range(256)]
    assert len(bpe.encode(CORPUS)) < len(CORPUS.encode()) / 2  # merges compress


def test_training_is_deterministic(bpe):
    again = Tokenizer.train(iter(CORPUS.split("\n\n")), vocab_size=512)
    assert again.fingerprint() == bpe.fingerprint()


def test_bpe_smallest_vocab_is_bytes():
    tok = Tokenizer.train(["hello world"], vocab_size=256 + len(SPECIAL_TOKENS))
    assert tok.encode("hé") == list("hé".encode())


@pytest.mark.parametrize("size", [0, 100, 260, None, 512.0])
def test_too_small_or_bad_vocab_size(size):
    with pytest.raises(UserError, match=f"vocab_size.*{size}"):
        Tokenizer.train(["some text"], vocab_size=size)


def test_corpus_too_small_for_vocab():
    with pytest.raises(UserError, match="too small.*5000"):
        Tokenizer.train(["tiny text"], vocab_size=5000)


def test_train_rejects_bad_kind_and_items():
    with pytest.raises(UserError, match="kind"):
        Tokenizer.train(["x"], 300, kind="gpt2")
    with pytest.raises(UserError, match="item 1 is bytes"):
        Tokenizer.train(["ok", b"bytes"], 300)


def test_train_from_generator_and_surrogates():
    docs = (CORPUS[i : i + 500] + ESCAPED for i in range(0, len(CORPUS), 500))
    tok = Tokenizer.train(docs, vocab_size=400)
    assert tok.n_vocab == 400 and tok.decode(tok.encode(ESCAPED)) == ESCAPED


def test_char_layout(char):
    assert char.encode("Hi!") == [72, 105, 33]  # ASCII id = byte value
    n_chars = char.n_vocab - 256 - len(SPECIAL_TOKENS)
    assert n_chars == len({c for c in CORPUS if not c.isascii()})
    assert len(char.encode("你好")) == 2
    assert char.encode("ॐ") == list("ॐ".encode())  # unseen: falls back to its bytes
    assert list(char.special_tokens.values()) == list(range(char.n_vocab - 5, char.n_vocab))


def test_char_vocab_size_is_an_upper_bound():
    tok = Tokenizer.train(["ééé ü 你你 x"], vocab_size=256 + 5 + 2, kind="char")
    assert tok.n_vocab == 263  # é (3) and 你 (2) kept; ü dropped
    assert len(tok.encode("é你")) == 2 and tok.encode("ü") == list("ü".encode())


# ---- special tokens -------------------------------------------------------------------


def test_special_token_policy(any_tok):
    text = f"a{EOT}b"
    assert any_tok.eot_id not in any_tok.encode(text)  # ordinary text by default
    assert any_tok.decode(any_tok.encode(text)) == text
    for allowed in ({EOT}, "all", EOT):
        ids = any_tok.encode(text, allowed_special=allowed)
        assert ids.count(any_tok.eot_id) == 1 and any_tok.decode(ids) == text
    assert any_tok.decode([any_tok.eot_id]) == EOT


def test_chat_specials(bpe, permuted_dir):
    ids = bpe.encode(f"{USER}hi{END}{ASSISTANT}", "all")
    assert ids[0] == bpe.special_tokens[USER] and ids[-1] == bpe.special_tokens[ASSISTANT]
    assert bpe.encode(SYSTEM, {EOT}) != [bpe.special_tokens[SYSTEM]]
    gpt2 = Tokenizer.from_gpt2_files(permuted_dir)  # its vocab.json holds only EOT
    assert list(gpt2.special_tokens) == [EOT]
    with pytest.raises(UserError, match="<\\|user\\|>"):
        gpt2.encode("x", {USER})
    chat = gpt2.with_chat_specials()
    assert chat.n_vocab == gpt2.n_vocab + 4 and chat.eot_id == gpt2.eot_id
    assert [chat.special_tokens[s] for s in SPECIAL_TOKENS[1:]] == list(range(gpt2.n_vocab, gpt2.n_vocab + 4))
    assert chat.encode(USER, "all") == [gpt2.n_vocab + 1]
    assert chat.encode(HELD_OUT) == gpt2.encode(HELD_OUT)
    assert bpe.with_chat_specials() is bpe


def test_token_byte_lengths(any_tok):
    lengths = any_tok.token_byte_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (any_tok.n_vocab,)
    assert all(lengths[i] == 0 for i in any_tok.special_tokens.values())
    for text in (HELD_OUT, ROUND_TRIP["all_bytes"], ROUND_TRIP["zwj_family"]):
        ids = any_tok.encode(text)
        assert int(lengths[ids].sum()) == len(text.encode("utf-8", "surrogateescape"))


# ---- save / load ----------------------------------------------------------------------


def test_save_load_equality(any_tok, tmp_path):
    path = any_tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "pocketgpt_tokenizer.json"
    loaded = Tokenizer.load(tmp_path / "tok")
    assert load_tokenizer(path) == loaded == any_tok
    assert loaded.fingerprint() == any_tok.fingerprint() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (loaded.kind, loaded.n_vocab, loaded.special_tokens) == (
        any_tok.kind,
        any_tok.n_vocab,
        any_tok.special_tokens,
    )
    for text in (HELD_OUT, ROUND_TRIP["escaped_bytes"], f"x{EOT}y"):
        assert loaded.encode(text, "all") == any_tok.encode(text, "all")
    assert np.array_equal(loaded.token_byte_lengths(), any_tok.token_byte_lengths())
    assert not list(path.parent.glob("*.tmp"))
    assert json.loads(path.read_text())["format"] == "pocketgpt-tokenizer"


def test_fingerprint_tells_tokenizers_apart(bpe, char):
    other = Tokenizer.train(CORPUS.split("\n\n"), vocab_size=513)
    assert len({bpe.fingerprint(), char.fingerprint(), other.fingerprint()}) == 3
    assert bpe != other and bpe.with_chat_specials() == bpe


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        Tokenizer.load(tmp_path / "nope")
    with pytest.raises(UserError, match="pocketgpt_tokenizer.json"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda obj: "{not json",
        lambda obj: "",
        lambda obj: json.dumps([1, 2]),
        lambda obj: json.dumps({**obj, "format": "other"}),
        lambda obj: json.dumps({**obj, "version": 99}),
        lambda obj: json.dumps({**obj, "kind": "wordpiece"}),
        lambda obj: json.dumps({**obj, "tokens": obj["tokens"][:100]}),
        lambda obj: json.dumps({**obj, "tokens": ["zz"] + obj["tokens"][1:]}),
        lambda obj: json.dumps({**obj, "tokens": obj["tokens"][:300] + ["4142"] * (len(obj["tokens"]) - 300)}),
        lambda obj: json.dumps({**obj, "special_tokens": {"<|weird|>": 3}}),
        lambda obj: json.dumps({k: v for k, v in obj.items() if k != "tokens"}),
    ],
)
def test_load_corrupt_file(bpe, tmp_path, corrupt):
    path = bpe.save(tmp_path)
    obj = json.loads(path.read_text())
    path.write_text(corrupt(obj))
    with pytest.raises(UserError, match=str(path)):
        Tokenizer.load(tmp_path)


# ---- GPT-2 format files ---------------------------------------------------------------


def test_gpt2_export_encodes_identically(bpe, gpt2, gpt2_dir):
    texts = [HELD_OUT, CORPUS[:5000], ROUND_TRIP["mixed_scripts"], ROUND_TRIP["whitespace_runs"]]
    ours = [bpe.encode(t) for t in texts]
    assert [gpt2.encode(t) for t in texts] == ours
    assert hf_encode(gpt2_dir, texts) == ours
    assert gpt2.n_vocab == bpe.n_vocab and gpt2.eot_id == bpe.eot_id


def test_gpt2_ids_not_in_merge_order(permuted_dir, bpe):
    tok = Tokenizer.from_gpt2_files(permuted_dir / "vocab.json", permuted_dir / "merges.txt")
    assert tok.eot_id == 0 and tok.n_vocab == bpe.n_vocab - 4
    texts = [HELD_OUT, ROUND_TRIP["chinese"], "Hello world"]
    assert [tok.encode(t) for t in texts] == hf_encode(permuted_dir, texts)
    assert tok.encode(f"x{EOT}", "all")[-1] == 0
    for text in ROUND_TRIP.values():
        assert tok.decode(tok.encode(text)) == text
    assert Tokenizer.load(tok.save(permuted_dir / "saved")) == tok


def test_gpt2_files_missing(tmp_path):
    with pytest.raises(UserError, match="vocab.json"):
        Tokenizer.from_gpt2_files(tmp_path)
    with pytest.raises(UserError, match="not found"):
        Tokenizer.from_gpt2_files(tmp_path / "absent")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(UserError, match="merges.txt"):
        Tokenizer.from_gpt2_files(tmp_path / "vocab.json")


@pytest.mark.skipif(not (GPT2_DIR / "vocab.bpe").is_file(), reason="GPT-2 files not in ../shared/data/gpt2")
def test_real_gpt2_files(tmp_path):
    tok = Tokenizer.from_gpt2_files(GPT2_DIR)
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.n_vocab, tok.eot_id) == (50257, 50256)
    assert tok.encode(EOT, "all") == [50256]
    shutil.copy(GPT2_DIR / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(GPT2_DIR / "vocab.bpe", tmp_path / "merges.txt")
    texts = [make_text(9000, seed=5)] + [ROUND_TRIP[k] for k in ("crlf", "chinese", "zwj_family")]
    texts += [" leading space", "trailing   ", "ends with newline\n\n"]
    assert sum(len(t) for t in texts) > 50_000
    assert [tok.encode(t) for t in texts] == hf_encode(tmp_path, texts)
    tok.save_gpt2_files(tmp_path / "export")  # recovers GPT-2's merges from the ranks alone
    assert (tmp_path / "export/merges.txt").read_text().strip() == (GPT2_DIR / "vocab.bpe").read_text().strip()
    assert json.loads((tmp_path / "export/vocab.json").read_text()) == json.loads(
        (GPT2_DIR / "encoder.json").read_text()
    )


def test_package_needs_no_torch():
    package = Path(__file__).resolve().parents[2] / "pocketgpt" / "tokenizer"
    for source in package.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert "import torch" not in text and "from torch" not in text, source
