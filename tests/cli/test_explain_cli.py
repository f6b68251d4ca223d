"""`pocketgpt explain`: prints pieces, ids and bytes and the probabilities softmax(logits) gives; writes the folder;
--bos / --no-bos as generate; bad input is one line, exit 2."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cli_helpers import assert_user_error, cli  # noqa: F401

from pocketgpt.checkpoint import load_checkpoint, save_checkpoint
from pocketgpt.config import ModelConfig
from pocketgpt.model import GPT
from pocketgpt.model.quant import SCHEME, quantize_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tiny_tokenizer.n_vocab)
    return save_checkpoint(tmp_path_factory.mktemp("explain") / "run", "ckpt-0000001", GPT(cfg), tiny_tokenizer)


def table(out: str, header: str, cuts: list[int]) -> list[list[str]]:
    """The lines under the line starting with `header`, up to a blank line, cut into fixed-width columns."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:2] == header.split()) + 1
    rows = []
    for ln in lines[start:]:
        if not ln.strip():
            break
        rows.append([ln[a:b].strip() for a, b in zip([0, *cuts], [*cuts, None])])
    return rows


def test_it_prints_the_probabilities_softmax_gives(cli, ckpt, tiny_tokenizer):
    code, out, err = cli("explain", ckpt, "--prompt", "the model reads", "--top-k", "3")
    assert code == 0, err
    ids = [tiny_tokenizer.eot_id] + tiny_tokenizer.encode("the model reads")
    tokens = table(out, "pos id", [4, 12, 30])  # pos, id, piece, bytes
    assert [int(r[1]) for r in tokens] == ids
    assert tokens[0][2:] == ["<|endoftext|>", "(special)"]
    assert tokens[1][3] == " ".join(f"{b:02x}" for b in tiny_tokenizer.decode_bytes([ids[1]]))
    model = load_checkpoint(ckpt).model
    with torch.no_grad():
        probs = model(torch.tensor([ids]))[0][0].double().softmax(-1)
    rows = table(out, "pos after", [4, 22, 40, 50, 58])  # pos, after, next, p(next), rank, top k
    assert len(rows) == len(ids)
    for r in rows:
        pos = int(r[0])
        shown = [float(x) for x in re.findall(r'(?:"|>) ([0-9][0-9.e+-]*)(?:\s|$)', r[5])]
        assert shown == pytest.approx(probs[pos].topk(3).values.tolist(), rel=1e-3)  # printed with 4 digits
        if pos + 1 < len(ids):
            assert float(r[3]) == pytest.approx(probs[pos, ids[pos + 1]].item(), rel=1e-3)
            assert int(r[4]) == int((probs[pos] > probs[pos, ids[pos + 1]]).sum()) + 1
    assert rows[-1][2:5] == ["-", "-", "-"]
    assert "--out DIR" in out


def test_out_writes_the_folder_and_no_bos_drops_the_first_token(cli, ckpt, tmp_path, tiny_tokenizer):
    out_dir = tmp_path / "ex"
    code, out, err = cli("explain", ckpt, "--prompt", "the model", "--out", out_dir, "--no-bos", "--layers", "-1")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["attention-layer-1.png", "explain.json", "next-token.png"]
    d = json.loads((out_dir / "explain.json").read_text())
    assert d["bos"] is False and [t["id"] for t in d["tokens"]] == tiny_tokenizer.encode("the model")
    assert d["attention"]["layers"] == [1] and d["attention"]["heads"] == [0, 1]
    assert "wrote 3 files" in out
    code, _, err = cli("explain", ckpt, "--prompt", "the", "--out", out_dir, "--bos")  # an earlier one is replaced
    assert code == 0, err
    assert json.loads((out_dir / "explain.json").read_text())["bos"] is True


def test_an_int8_checkpoint(cli, ckpt, tmp_path, tiny_tokenizer):
    c = load_checkpoint(ckpt)
    quantize_model(c.model)
    q = save_checkpoint(tmp_path / "q", "ckpt-0000001", c.model, tiny_tokenizer, extra={"quantized": dict(SCHEME)})
    code, out, err = cli("explain", q, "--prompt", "the model")
    assert code == 0, err
    assert "int8" in out.splitlines()[0]


@pytest.mark.parametrize(
    "args,words",
    [
        (["explain", "{missing}", "--prompt", "hi"], ["checkpoint not found"]),
        (["explain", "{ckpt}"], ["prompt is empty"]),
        (["explain", "{ckpt}", "--prompt", ""], ["prompt is empty"]),
        (["explain", "{ckpt}", "--prompt", "hi", "--layers", "7"], ["no layer 7"]),
        (["explain", "{ckpt}", "--prompt", "hi", "--heads", "x"], ["--heads takes integers"]),
        (["explain", "{ckpt}", "--prompt", "hi", "--top-k", "0"], ["--top-k must be >= 1"]),
        (["explain", "{ckpt}", "--prompt", "hi", "--out", "{taken}"], ["not an earlier explain folder"]),
    ],
)
def test_bad_input_is_one_line(cli, ckpt, tmp_path, args, words):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    subs = {"{missing}": str(tmp_path / "nope"), "{ckpt}": str(ckpt), "{taken}": str(taken)}
    code, out, err = cli(*[subs.get(a, a) for a in args])
    assert_user_error((code, out, err), *words)
    assert out == "" and (taken / "mine.txt").read_text() == "keep me"


def test_help(cli):
    code, out, _ = cli("explain", "--help")
    assert code == 0 and "--prompt" in out and "--no-bos" in out and "--heads" in out
