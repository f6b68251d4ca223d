"""SFT data: the three JSONL formats, errors naming file and line, crop/drop, answer-only targets, answer loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.data.sft import SFTBatches, answer_loss, encode_chats, load_chat_records
from pocketgpt.errors import UserError
from pocketgpt.model import GPT
from pocketgpt.tokenizer.chat import render_conversation


def write_jsonl(path, lines) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")


def conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_three_formats_and_blank_lines(tmp_path):
    p = tmp_path / "data.jsonl"
    write_jsonl(
        p,
        [
            {"messages": [{"role": "system", "content": "S"}, *conv("q1", "a1")]},
            "",
            {"instruction": "Translate", "input": "chat", "output": "cat"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
            {"instruction": "Count", "output": "1 2 3"},
            "   ",
            {"prompt": "2+2=", "completion": "4"},
        ],
    )
    assert load_chat_records(p) == [
        [{"role": "system", "content": "S"}, *conv("q1", "a1")],
        conv("Translate\n\nchat", "cat"),
        conv("Say hi", "hi"),
        conv("Count", "1 2 3"),
        conv("2+2=", "4"),
    ]


@pytest.mark.parametrize(
    "bad,needle",
    [
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"text": "x"}', "unrecognised"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "'bot'"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant"),
        ('{"instruction": "x", "output": 3}', "'output'"),
        ('{"prompt": "x", "completion": null}', "'completion'"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad, needle):
    p = tmp_path / "data.jsonl"
    write_jsonl(p, [{"prompt": "a", "completion": "b"}, "", bad])
    with pytest.raises(UserError, match=needle) as e:
        load_chat_records(p)
    assert f"{p} line 3" in str(e.value) and "\n" not in str(e.value)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="no records"):
        load_chat_records(p)
    with pytest.raises(UserError, match="not found"):
        load_chat_records(tmp_path / "nope.jsonl")


def test_crop_and_drop_counts(tiny_tokenizer):
    tok = tiny_tokenizer
    short = conv("hi", "hello")
    long_answer = conv("hi", "the model reads tokens " * 20)  # answer starts early: cropping keeps some
    long_prompt = conv("the model reads tokens " * 20, "yes")  # answer lies past the crop
    n_short = len(render_conversation(short, tok)[0])
    block = 24
    assert n_short <= block + 1
    examples, stats = encode_chats([short, long_answer, long_prompt], tok, block, overlong="crop")
    assert stats == {"examples": 2, "cropped": 1, "dropped": 1, "answer_tokens": sum(sum(m[1:]) for _, m in examples)}
    assert [len(ids) for ids, _ in examples] == [n_short, block + 1]
    full_ids, full_mask = render_conversation(long_answer, tok)
    assert examples[1] == (full_ids[: block + 1], full_mask[: block + 1])
    examples, stats = encode_chats([short, long_answer, long_prompt], tok, block, overlong="drop")
    assert stats["examples"] == 1 and stats["dropped"] == 2 and stats["cropped"] == 0
    with pytest.raises(UserError, match="no example is left"):
        encode_chats([long_prompt], tok, block, overlong="drop")
    with pytest.raises(UserError, match="overlong"):
        encode_chats([short], tok, block, overlong="truncate")


def check_rows(x, y, examples, pad_id):
    """Every row is one example: inputs then padding; targets the next id where the mask says so, else -1."""
    T, lengths = x.shape[1], []
    for b in range(x.shape[0]):
        ids, mask = next((i, m) for i, m in examples if x[b, : len(i) - 1].tolist() == i[:-1])
        n = len(ids) - 1
        assert x[b, n:].tolist() == [pad_id] * (T - n)
        assert y[b, n:].tolist() == [-1] * (T - n)
        for t in range(n):
            assert y[b, t].item() == (ids[t + 1] if mask[t + 1] else -1), (b, t)
        lengths.append(n)
    assert T == max(lengths)  # padded to the longest input of this batch


def test_batches_targets_padding_and_determinism(tiny_tokenizer):
    tok = tiny_tokenizer
    convs = [conv(f"question {i} " * (i // 2 + 1), f"answer {i} " * (3 - i % 3)) for i in range(6)]
    examples, stats = encode_chats(convs, tok, 48)
    assert stats["examples"] == 6 and stats["dropped"] == 0
    batches = SFTBatches(examples, batch_size=4, block_size=48, seed=3)
    x, y = batches.get(0)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[0] == 4
    assert x.shape[1] <= 48
    check_rows(x, y, examples, tok.eot_id)
    for step in range(5):
        xs, ys = batches.get(step, micro=1)
        check_rows(xs, ys, examples, tok.eot_id)
        assert (
            xs.shape[1]
            == max(
                len(examples[i][0])
                for i in range(len(examples))
                if any(xs[b, : len(examples[i][0]) - 1].tolist() == examples[i][0][:-1] for b in range(4))
            )
            - 1
        )
    # answer positions only: as many targets as answer tokens of the rows
    again = SFTBatches(examples, batch_size=4, block_size=48, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batches.get(7, 2), again.get(7, 2)))
    others = [
        SFTBatches(examples, 4, 48, seed=4).get(7, 2),
        SFTBatches(examples, 4, 48, seed=3, rank=1).get(7, 2),
        batches.get(8, 2),
        batches.get(7, 3),
    ]
    assert all(
        not torch.equal(o[0], batches.get(7, 2)[0]) or not torch.equal(o[1], batches.get(7, 2)[1]) for o in others
    )
    assert batches.state_dict() == {"seed": 3, "rank": 0, "block_size": 48, "batch_size": 4, "examples": 6}


def test_batches_by_hand():
    examples = [([9, 1, 2, 3, 4], [0, 0, 1, 1, 0]), ([9, 5, 6], [0, 1, 1]), ([9, 7, 8, 8], [0, 0, 0, 1])]
    x, y = SFTBatches(examples, batch_size=3, block_size=4, seed=0).get(0)
    rows = {int(r[1]): (x[b].tolist(), y[b].tolist()) for b, r in enumerate(x)}
    assert rows[1] == ([9, 1, 2, 3], [-1, 2, 3, -1])
    assert rows[5] == ([9, 5, 9, 9], [5, 6, -1, -1])
    assert rows[7] == ([9, 7, 8, 9], [-1, -1, 8, -1])
    with pytest.raises(UserError, match="block_size"):
        SFTBatches(examples, batch_size=2, block_size=3)
    with pytest.raises(UserError, match="at least one"):
        SFTBatches([], batch_size=2, block_size=3)


def test_answer_loss_equals_a_hand_computation(tiny_tokenizer):
    tok = tiny_tokenizer
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.n_vocab))
    model.train()
    examples, stats = encode_chats(
        [conv("hi", "hello there"), conv("what is a block", "layers"), conv("x " * 10, "the model reads tokens")],
        tok,
        64,
    )
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask in examples:  # one unpadded example at a time
            logits, _ = model.eval()(torch.tensor([ids[:-1]]))
            logp = F.log_softmax(logits[0].double(), dim=-1)
            for t in range(len(ids) - 1):
                if mask[t + 1]:
                    total -= float(logp[t, ids[t + 1]])
                    n += 1
    model.train()
    r = answer_loss(model, examples, batch_size=2)  # padded batches
    assert r["val_answer_tokens"] == n == stats["answer_tokens"]
    assert r["val_answer_loss"] == pytest.approx(total / n, abs=1e-5)
    assert model.training  # mode restored
    assert np.isfinite(r["val_answer_loss"])


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    """U+2028 / U+2029 inside a JSON string are not line breaks in JSONL (GSM8K has them)."""
    from pocketgpt.data.sft import load_chat_records

    p = tmp_path / "u2028.jsonl"
    p.write_text(
        json.dumps({"prompt": "a\u2028b", "completion": "c\u2029d"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    convs = load_chat_records(p)
    assert convs[0][0]["content"] == "a\u2028b" and convs[0][1]["content"] == "c\u2029d"
