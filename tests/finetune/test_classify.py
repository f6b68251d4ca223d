"""Classification: the head overfits a tiny set through the shared loop, pooling reads the last real token,
labelled files (CSV, TSV, headerless TSV, JSONL) and their errors, batches, metrics on a hand example."""

import json
import math
import random

import pytest
import torch
import torch.nn as nn

from pocketgpt.config import TrainConfig
from pocketgpt.errors import UserError
from pocketgpt.finetune.classify import (
    ClassifyBatches,
    classify_metrics,
    encode_texts,
    label_set,
    predict,
    read_labelled,
)
from pocketgpt.model import GPT
from pocketgpt.model.classifier import GPTClassifier
from pocketgpt.train.loop import train_loop

A_WORDS = "attention mixes values residual stream block".split()
B_WORDS = "python code def return import class".split()


def labelled_set(n=24, seed=0):
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = A_WORDS if i % 2 == 0 else B_WORDS
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))))
        labels.append("pos" if i % 2 == 0 else "neg")
    return texts, labels


def test_classifier_overfits_tiny_set_through_the_loop(tiny_cfg, tiny_tokenizer, tmp_path):
    texts, labels = labelled_set()
    names = label_set(labels)
    ids = [names.index(lab) for lab in labels]
    encoded, kept, stats = encode_texts(texts, tiny_tokenizer, tiny_cfg.block_size)
    assert kept == list(range(len(texts))) and stats["cropped"] == 0
    assert all(e[0] == tiny_tokenizer.eot_id for e in encoded)
    torch.manual_seed(0)
    model = GPTClassifier.from_gpt(GPT(tiny_cfg), len(names))
    before = classify_metrics(model, encoded, ids, len(names))
    assert before["val_loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: uniform at start
    batches = ClassifyBatches(
        encoded, ids, batch_size=8, block_size=tiny_cfg.block_size, pad_id=tiny_tokenizer.eot_id, seed=1
    )
    cfg = TrainConfig(
        max_steps=30,
        lr=3e-3,
        warmup_steps=0,
        eval_every=0,
        save_every=0,
        log_every=0,
        weight_decay=0.0,
        dtype="float32",
    )
    result = train_loop(model, batches, cfg, tmp_path, save=lambda *a: None)
    assert result.step == 30
    after = classify_metrics(model, encoded, ids, len(names))
    assert after["val_accuracy"] == 1.0 and after["val_macro_f1"] == 1.0
    assert after["val_loss"] < 0.2
    out = predict(model, tiny_tokenizer, ["python code def", "attention values residual"], names)
    assert [o["label"] for o in out] == ["neg", "pos"]
    assert sum(out[0]["probs"].values()) == pytest.approx(1.0)


def test_pooling_reads_the_last_real_token(tiny_cfg):
    torch.manual_seed(0)
    model = GPTClassifier(tiny_cfg, 3).eval()
    nn.init.normal_(model.score.weight, std=0.5)
    V = tiny_cfg.vocab_size
    seq = torch.randint(0, V, (5,))
    x1 = torch.cat([seq, torch.zeros(3, dtype=torch.long)])[None]  # (1, 8): 3 pads of id 0
    x2 = torch.cat([seq, torch.randint(0, V, (7,))])[None]  # (1, 12): 7 random pads
    lengths = torch.tensor([5])
    l1, _ = model(x1, None, lengths)
    l2, _ = model(x2, None, lengths)
    l0, _ = model(seq[None])  # no padding, lengths=None
    assert l1.shape == (1, 3) and l1.dtype == torch.float32
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-6)
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-6)
    x3 = x1.clone()
    x3[0, 4] = (x3[0, 4] + 1) % V  # the last real token
    assert not torch.allclose(model(x3, None, lengths)[0], l1)
    # a batch pools each row at its own length
    both = torch.stack([x1[0], torch.cat([seq[:3], torch.full((5,), 7)])])
    lb, loss = model(both, torch.tensor([0, 2]), torch.tensor([5, 3]))
    torch.testing.assert_close(lb[0], l1[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(lb[1], model(seq[None, :3])[0][0], rtol=0, atol=1e-6)
    assert loss.ndim == 0
    with pytest.raises(ValueError, match="lengths"):
        model(x1, None, torch.tensor([9]))


def test_from_gpt_copies_the_trunk(tiny_model):
    clf = GPTClassifier.from_gpt(tiny_model, 2)
    missing, unexpected = GPTClassifier(tiny_model.config, 2).load_state_dict(tiny_model.state_dict(), strict=False)
    assert missing == ["score.weight"] and unexpected == []
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 6))
    torch.testing.assert_close(clf.hidden(x), tiny_model.hidden(x), rtol=0, atol=0)
    assert torch.count_nonzero(clf.score.weight) == 0
    with pytest.raises(UserError, match="n_classes=1"):
        GPTClassifier(tiny_model.config, 1)


def test_read_labelled_csv_tsv_headerless_jsonl(tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text('id,text,label\n1,"hello, world",positive\n2,"a ""quoted""\nline",negative\n\n')
    assert read_labelled(csv_file) == (["hello, world", 'a "quoted"\nline'], ["positive", "negative"])
    tsv = tmp_path / "b.tsv"
    tsv.write_text('sentence\tlabel\nit\'s "great"\t1\nbad\t0\n')
    assert read_labelled(tsv, text_column="sentence") == (['it\'s "great"', "bad"], ["1", "0"])
    headerless = tmp_path / "sst2.tab"
    headerless.write_text("a fine film\t1\na dull one\t0\n")
    assert read_labelled(headerless) == (["a fine film", "a dull one"], ["1", "0"])
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"review": "nice", "y": 1}) + "\n\n" + json.dumps({"review": "meh", "y": 0}) + "\n")
    assert read_labelled(jl, "review", "y") == (["nice", "meh"], ["1", "0"])
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]))
    assert read_labelled(arr) == (["x", "y"], ["a", "b"])


@pytest.mark.parametrize(
    "name, content, kwargs, match",
    [
        ("a.csv", "txt,label\nhi,1\n", {}, r"no column 'text'; columns found: 'txt', 'label'"),
        ("a.csv", "text,lab\nhi,1\n", {}, r"no column 'label'; columns found: 'text', 'lab'"),
        ("a.tsv", "text\tcategory\thint\nhi\t1\tx\n", {}, r"no column 'label'; columns found"),
        (
            "a.jsonl",
            '{"text": "hi", "label": 1}\n{"text": "yo"}\n',
            {},
            r"a\.jsonl:2 has no column 'label'; columns found: 'text'",
        ),
        ("a.jsonl", '{"text": "hi", "label": 1}\n{"text": "yo", "label": \n', {}, r"a\.jsonl:2: malformed JSON line"),
        ("a.csv", "text,label\nhi,1\n   ,0\n", {}, r"a\.csv:3: empty text in column 'text'"),
        ("a.jsonl", '{"text": "", "label": 1}\n', {}, r"a\.jsonl:1: empty text"),
        ("a.csv", "text,label\n", {}, r"a\.csv has no rows"),
        ("a.jsonl", "\n\n", {}, r"a\.jsonl has no rows"),
        ("a.csv", "text,label\nhi,1\nyo,1\n", {}, r"every row has label '1'; classification needs at least 2 classes"),
        ("a.txt", "hi\t1\n", {}, r"use \.csv, \.tsv"),
    ],
)
def test_read_labelled_errors(tmp_path, name, content, kwargs, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(UserError, match=match):
        read_labelled(p, **kwargs)


def test_read_labelled_missing_file(tmp_path):
    with pytest.raises(UserError, match="labelled data not found: .*nope.csv"):
        read_labelled(tmp_path / "nope.csv")


def test_label_set_is_numeric_aware():
    assert label_set(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_set(["b", "a", "-1", "0.5"]) == ["-1", "0.5", "a", "b"]


def test_encode_texts_crop_keeps_start_or_drops(tiny_tokenizer):
    long = "python code " * 40
    enc, kept, stats = encode_texts(["short one", long], tiny_tokenizer, 16, "crop")
    assert kept == [0, 1] and len(enc[1]) == 16 and stats["cropped"] == 1
    assert enc[1] == ([tiny_tokenizer.eot_id] + tiny_tokenizer.encode(long))[:16]
    enc, kept, stats = encode_texts(["short one", long], tiny_tokenizer, 16, "drop")
    assert kept == [0] and len(enc) == 1 and stats["dropped"] == 1
    with pytest.raises(UserError, match="longer than block_size=16"):
        encode_texts([long], tiny_tokenizer, 16, "drop")
    with pytest.raises(UserError, match="overlong"):
        encode_texts([long], tiny_tokenizer, 16, "cut")


def test_batches_are_a_function_of_seed_rank_step_micro():
    encoded = [[1] * n for n in range(1, 11)]
    ids = [n % 2 for n in range(10)]
    b = ClassifyBatches(encoded, ids, batch_size=4, block_size=16, pad_id=99, seed=3)
    x, y, lengths = b.get(5, 1)
    assert x.dtype == y.dtype == lengths.dtype == torch.int64
    assert x.shape == (4, int(lengths.max())) and y.shape == lengths.shape == (4,)
    for row, n, label in zip(x, lengths, y):
        assert row[:n].tolist() == [1] * int(n) and (row[n:] == 99).all() and label == (n - 1) % 2
    again = ClassifyBatches(encoded, ids, batch_size=4, block_size=16, pad_id=99, seed=3).get(5, 1)
    assert all(torch.equal(a, c) for a, c in zip((x, y, lengths), again))
    others = [b.get(6, 1), b.get(5, 0), ClassifyBatches(encoded, ids, 4, 16, 99, seed=3, rank=1).get(5, 1)]
    assert all(not torch.equal(o[2], lengths) or not torch.equal(o[1], y) for o in others)
    assert b.state_dict()["seed"] == 3 and b.block_size == 16
    with pytest.raises(ValueError, match="block_size=4"):
        ClassifyBatches(encoded, ids, 4, 4, 0)


class FixedPredictions(nn.Module):
    """Logits 10 * one_hot(first token): the 'model' predicts whatever class id its input starts with."""

    def __init__(self, n_classes):
        super().__init__()
        self.n_classes = n_classes

    def forward(self, idx, targets=None, lengths=None):
        assert not self.training
        return 10.0 * nn.functional.one_hot(idx[:, 0], self.n_classes).float(), None


def test_metrics_on_a_hand_example():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    model = FixedPredictions(3).train()
    m = classify_metrics(model, [[p] for p in y_pred], y_true, 3, batch_size=2)
    assert model.training  # mode restored
    assert m["val_accuracy"] == pytest.approx(3 / 5)
    # F1 per class: 0 -> P 1/2 R 1/2 = 0.5; 1 -> P 2/3 R 1 = 0.8; 2 -> P 0 R 0 = 0
    assert m["val_macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    right = -math.log(math.exp(10) / (math.exp(10) + 2))
    wrong = -math.log(1 / (math.exp(10) + 2))
    assert m["val_loss"] == pytest.approx((3 * right + 2 * wrong) / 5, rel=1e-5)
    # a class that nobody has and nobody predicts does not count (scikit-learn's convention)
    assert classify_metrics(FixedPredictions(4), [[p] for p in y_pred], y_true, 4)["val_macro_f1"] == pytest.approx(
        m["val_macro_f1"]
    )
