"""`pocketgpt finetune / classify / merge` end to end on tiny data the tests write, and every bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pocketgpt.checkpoint import load_checkpoint, save_checkpoint
from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.model import GPT
from pocketgpt.tokenizer import Tokenizer, chat

QA = [("What colour is the sky?", "Blue."), ("What is two plus two?", "Four."), ("Who wrote Hamlet?", "Shakespeare.")]
FAST = [
    "--train.batch_size",
    "8",
    "--train.warmup_steps",
    "5",
    "--train.eval_every",
    "0",
    "--train.log_every",
    "5",
    "--train.dtype",
    "float32",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_text):
    tok = Tokenizer.train([corpus_text + " ".join(q + " " + a for q, a in QA)], vocab_size=400)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=tok.n_vocab))
    root = tmp_path_factory.mktemp("base")
    save_checkpoint(root / "run", "ckpt-0000001", model, tok, step=1)
    return root / "run"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_data(tmp_path):
    return write_jsonl(
        tmp_path / "qa.jsonl",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA] * 4,
    )


def answer(ckpt_path, question):
    from pocketgpt.generate.text import TextGenerator

    ck = load_checkpoint(ckpt_path)
    ids = chat.render_for_completion([{"role": "user", "content": question}], ck.tokenizer)
    gen = TextGenerator(ck.model, ck.tokenizer)
    return gen.complete_ids(ids, SampleConfig(max_new_tokens=12, temperature=0), chat.stop_token_ids(ck.tokenizer)).text


def test_chat_finetuning_teaches_the_answers(run_cli, base, tmp_path):
    code, out, err = run_cli(
        "finetune",
        base,
        "--data",
        chat_data(tmp_path),
        "--out",
        tmp_path / "chat",
        "--task",
        "chat",
        "--train.max_steps",
        "120",
        "--train.lr",
        "3e-3",
        "--val_fraction",
        "0.1",
        *FAST,
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "chat" / "ckpt-0000120" / "config.json").read_text())
    assert meta["chat_template"] == chat.TEMPLATE and meta["task"] == "chat"
    for q, a in QA:
        assert answer(tmp_path / "chat", q) == a


def test_lora_chat_runs_unmerged_and_merges_to_the_same_outputs(run_cli, base, tmp_path):
    code, out, err = run_cli(
        "finetune",
        base,
        "--data",
        chat_data(tmp_path),
        "--out",
        tmp_path / "lora",
        "--task",
        "chat",
        "--lora.rank",
        "4",
        "--train.max_steps",
        "30",
        "--train.lr",
        "1e-2",
        *FAST,
    )
    assert code == 0, err
    ck = tmp_path / "lora" / "ckpt-0000030"
    assert (ck / "adapter.safetensors").exists() and not (ck / "model.safetensors").exists()
    assert (ck / "adapter.safetensors").stat().st_size < (
        base / "ckpt-0000001" / "model.safetensors"
    ).stat().st_size / 3
    base_w = load_file(str(base / "ckpt-0000001" / "model.safetensors"))
    unmerged = load_checkpoint(tmp_path / "lora").model
    state = unmerged.state_dict()
    assert any("lora_A" in k for k in state)
    for k, v in base_w.items():  # training left every base weight as it was
        assert torch.equal(state[k], v), k
    code, _, err = run_cli("merge", base, tmp_path / "lora", tmp_path / "merged")
    assert code == 0, err
    merged = load_checkpoint(tmp_path / "merged").model
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert (unmerged(x)[0] - merged(x)[0]).abs().max() < 1e-5


def test_finetune_resume_is_exact(run_cli, base, tmp_path):
    """6 steps straight == 3 steps, stop, --resume to 6 (constant lr, so both runs see the same schedule)."""
    data = chat_data(tmp_path)
    args = [
        "finetune",
        base,
        "--data",
        data,
        "--task",
        "chat",
        "--train.save_every",
        "3",
        "--train.schedule",
        "constant",
        *FAST,
    ]
    assert run_cli(*args, "--out", tmp_path / "a", "--train.max_steps", "6")[0] == 0
    assert run_cli(*args, "--out", tmp_path / "c", "--train.max_steps", "3")[0] == 0
    code, _, err = run_cli("finetune", base, "--out", tmp_path / "c", "--resume", "--train.max_steps", "6")
    assert code == 0, err
    wa = load_file(str(tmp_path / "a" / "ckpt-0000006" / "model.safetensors"))
    wc = load_file(str(tmp_path / "c" / "ckpt-0000006" / "model.safetensors"))
    assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    w0 = load_file(str(base / "ckpt-0000001" / "model.safetensors"))
    assert any(not torch.equal(wc[k], w0[k]) for k in w0)  # it did train


@pytest.mark.parametrize(
    "rows,needle",
    [
        (["{bad json"], "line 1"),
        ([{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}], "wizard"),
        ([{"messages": [{"role": "user", "content": "only a question"}]}], "assistant"),
    ],
)
def test_bad_chat_data(run_cli, base, tmp_path, rows, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    code, _, err = run_cli("finetune", base, "--data", p, "--out", tmp_path / "o", "--task", "chat", *FAST)
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "LATEST").exists()


@pytest.mark.parametrize(
    "content,flags,needle",
    [
        ("text,label\na,1\nb,1\n", [], "2 classes"),
        ("words,label\na,1\nb,0\n", [], "'text'"),
        ("text,label\na,1\nb,0\n", ["--label_column", "y"], "'y'"),
        (
            "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)),
            ["--lora.rank", "0", "--lora.alpha", "-1"],
            "alpha",
        ),
        ("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)), ["--lora.rank", "999"], "rank"),
        ("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)), ["--lora.rank", "-1"], "rank"),
    ],
)
def test_bad_classify_data_and_lora(run_cli, base, tmp_path, content, flags, needle):
    p = tmp_path / "d.csv"
    p.write_text(content)
    code, _, err = run_cli("finetune", base, "--data", p, "--out", tmp_path / "o", "--task", "classify", *flags, *FAST)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "LATEST").exists()


def test_classify_end_to_end_and_head_errors(run_cli, base, tmp_path):
    p = tmp_path / "s.csv"
    p.write_text(
        "text,label\n" + "".join("the model reads tokens,good\nlayer norms python code,bad\n" for _ in range(20))
    )
    code, out, err = run_cli(
        "finetune",
        base,
        "--data",
        p,
        "--out",
        tmp_path / "cls",
        "--task",
        "classify",
        "--train.max_steps",
        "30",
        "--train.lr",
        "3e-3",
        *FAST,
    )
    assert code == 0, err
    final = json.loads((tmp_path / "cls" / "final.json").read_text())
    assert final["val_accuracy"] == 1.0
    code, out, _ = run_cli("classify", tmp_path / "cls", "--text", "the model reads tokens", "--json")
    assert code == 0 and json.loads(out)["label"] == "good"
    code, _, err = run_cli("classify", base, "--text", "x")
    assert code == 2 and "classification head" in err
    code, _, err = run_cli("merge", base, tmp_path / "cls", tmp_path / "m")  # not a LoRA run
    assert code == 2 and "Traceback" not in err and not (tmp_path / "m").exists()


def test_adapter_that_does_not_match_its_checkpoint(run_cli, base, tmp_path, corpus_text):
    code, _, err = run_cli(
        "finetune",
        base,
        "--data",
        chat_data(tmp_path),
        "--out",
        tmp_path / "lora",
        "--task",
        "chat",
        "--lora.rank",
        "4",
        "--train.max_steps",
        "3",
        *FAST,
    )
    assert code == 0, err
    tok = Tokenizer.train([corpus_text], vocab_size=400)
    other = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.n_vocab))
    save_checkpoint(tmp_path / "other", "ckpt-0000001", other, tok, step=1)
    code, _, err = run_cli("merge", tmp_path / "other", tmp_path / "lora", tmp_path / "m")
    assert code == 2 and "does not match" in err and not (tmp_path / "m").exists()
