"""`pocketgpt chat`: history reaches the prompt, /commands, context trimming, Ctrl-C, -p, and refusals."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_text
from jsonargparse import ArgumentError, ArgumentParser

from pocketgpt.checkpoint import save_checkpoint
from pocketgpt.cli.chat import add_chat_arguments, run_chat
from pocketgpt.config import ModelConfig
from pocketgpt.errors import UserError
from pocketgpt.generate.text import TextGenerator
from pocketgpt.model import GPT
from pocketgpt.tokenizer import Tokenizer
from pocketgpt.tokenizer.bpe import GPT2_PATTERN
from pocketgpt.tokenizer.chat import TEMPLATE, render_for_completion, stop_token_ids
from pocketgpt.tokenizer.special import EOT, SYSTEM

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--temperature", "0", "--max-new-tokens", "8", "--device", "cpu", "--dtype", "float32"]
SCRIPT = "hello there\nhow are you\n/reset\nagain\n/quit\nnever read\n"


def tiny_gpt(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=vocab_size))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A chat-capable checkpoint: a trained tokenizer (it holds the chat specials) and a tiny random GPT."""
    root = tmp_path_factory.mktemp("chat")
    tok = Tokenizer.train([make_text(200)], vocab_size=300)
    save_checkpoint(root / "run", "ckpt-0000001", tiny_gpt(tok.n_vocab), tok, step=1, extra={"chat_template": TEMPLATE})
    return root / "run"


def parse(*args):
    p = ArgumentParser(exit_on_error=False)
    add_chat_arguments(p)
    return p.parse_args([str(a) for a in args])


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def spy(monkeypatch):
    """Record every prompt (token ids) the chat sends to the generator, and the answer it got."""
    calls = []
    real = TextGenerator.stream_ids

    def stream_ids(self, prompt_ids, sample, stop_ids):
        call = {
            "prompt": list(prompt_ids),
            "text": self.tokenizer.decode(prompt_ids),
            "answer": "",
            "stop_ids": list(stop_ids),
            "tok": self.tokenizer,
        }
        calls.append(call)
        for piece in real(self, prompt_ids, sample, stop_ids):
            call["answer"] += piece
            yield piece

    monkeypatch.setattr(TextGenerator, "stream_ids", stream_ids)
    return calls


def chat(monkeypatch, capsys, stdin, *args):
    monkeypatch.setattr(sys, "stdin", stdin)
    code = run_chat(parse(*args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_history_reaches_the_prompt_and_reset_clears_it(chat_run, spy, monkeypatch, capsys):
    # short answers (a random model may say "<|assistant|>", 13 tokens as text) keep both turns in the context
    code, out, err = chat(monkeypatch, capsys, io.StringIO(SCRIPT), chat_run, *FLAGS, "--max-new-tokens", "3")
    assert code == 0 and len(spy) == 3 and "dropped" not in err  # /quit ends it: "never read" is not
    tok = spy[0]["tok"]
    assert out == "".join(c["answer"] + "\n" for c in spy)  # no prompts on a pipe: answers only
    first, second, third = spy

    def user(s):
        return {"role": "user", "content": s}

    assert first["prompt"] == render_for_completion([user("hello there")], tok)
    assert second["prompt"] == render_for_completion(
        [user("hello there"), {"role": "assistant", "content": first["answer"]}, user("how are you")], tok
    )
    assert third["prompt"] == render_for_completion([user("again")], tok)  # /reset forgot both turns
    assert "hello there" in second["text"] and "hello there" not in third["text"]
    assert first["stop_ids"] == stop_token_ids(tok)


@pytest.fixture
def fixed(monkeypatch):
    """Answer every prompt "ok" without running the model; record the prompts as text."""
    prompts = []

    def stream_ids(self, prompt_ids, sample, stop_ids):
        prompts.append(self.tokenizer.decode(prompt_ids))
        yield "ok"

    monkeypatch.setattr(TextGenerator, "stream_ids", stream_ids)
    return prompts


def test_system_message_flag_and_command(chat_run, fixed, monkeypatch, capsys):
    stdin = io.StringIO("one\n/system Be terse.\ntwo\n/reset\nthree\n/system\nfour\n")
    code, out, _ = chat(monkeypatch, capsys, stdin, chat_run, *FLAGS, "--system", "You are kind.")
    assert code == 0 and out == "ok\n" * 4  # end of input exits 0

    def turn(role, text):
        return f"<|{role}|>{text}<|end|>"

    assert fixed == [
        EOT + turn("system", "You are kind.") + turn("user", "one") + "<|assistant|>",
        EOT
        + turn("system", "Be terse.")
        + turn("user", "one")
        + turn("assistant", "ok")
        + turn("user", "two")
        + "<|assistant|>",
        EOT + turn("system", "Be terse.") + turn("user", "three") + "<|assistant|>",  # /reset keeps the system
        EOT + turn("user", "three") + turn("assistant", "ok") + turn("user", "four") + "<|assistant|>",
    ]


def test_terminal_shows_prompts_and_help(chat_run, spy, monkeypatch, capsys):
    code, out, _ = chat(monkeypatch, capsys, FakeTTY("hi\n/help\n/exit\n"), chat_run, *FLAGS)
    assert code == 0 and len(spy) == 1
    assert out.count("you> ") == 3 and f"bot> {spy[0]['answer']}\n" in out and "/reset" in out


def test_old_turns_are_dropped_to_fit_the_context(chat_run, fixed, monkeypatch, capsys):
    prompts = fixed
    lines = [f"turn {i} ok" for i in range(8)]
    code, out, err = chat(
        monkeypatch, capsys, io.StringIO("\n".join(lines) + "\n"), chat_run, *FLAGS, "--system", "Sys."
    )
    assert code == 0 and out == "ok\n" * 8
    assert "dropped the oldest" in err
    tok = Tokenizer.load(chat_run / "ckpt-0000001")
    for text in prompts:
        assert len(tok.encode(text, allowed_special="all")) <= 64 - 16 and text.startswith(f"{EOT}{SYSTEM}Sys.")
    assert "turn 0" not in prompts[-1] and "turn 7" in prompts[-1] and "turn 6" in prompts[-1]


def test_ctrl_c_stops_the_answer_and_keeps_what_was_said(chat_run, monkeypatch, capsys):
    prompts = []

    def fake(self, prompt_ids, sample, stop_ids):
        prompts.append(self.tokenizer.decode(prompt_ids))
        yield "par"
        yield "tial"
        if len(prompts) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(TextGenerator, "stream_ids", fake)
    code, out, _ = chat(monkeypatch, capsys, io.StringIO("first\nsecond\n"), chat_run, *FLAGS)
    assert code == 0 and out == "partial\npartial\n"
    assert "<|assistant|>partial<|end|><|user|>second" in prompts[1]


def test_ctrl_c_or_eof_at_the_prompt_exits_0(chat_run, spy, monkeypatch, capsys):
    class Interrupted(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    assert chat(monkeypatch, capsys, Interrupted(), chat_run, *FLAGS)[0] == 0
    assert chat(monkeypatch, capsys, FakeTTY(""), chat_run, *FLAGS)[0] == 0
    assert spy == []


def test_one_shot_prompt(chat_run, spy, monkeypatch, capsys):
    code, out, _ = chat(monkeypatch, capsys, io.StringIO("not read\n"), chat_run, *FLAGS, "-p", "hello there")
    assert code == 0 and len(spy) == 1 and out == spy[0]["answer"] + "\n"
    assert spy[0]["prompt"] == render_for_completion([{"role": "user", "content": "hello there"}], spy[0]["tok"])


def test_refusals(chat_run, tmp_path, monkeypatch, capsys):
    plain = Tokenizer("bpe", [bytes([b]) for b in range(256)] + [None], {EOT: 256}, GPT2_PATTERN)
    save_checkpoint(tmp_path / "plain", "ckpt-0000001", tiny_gpt(plain.n_vocab), plain, step=1)
    with pytest.raises(UserError, match="not fine-tuned for chat.*finetune --task chat"):
        chat(monkeypatch, capsys, io.StringIO(""), tmp_path / "plain", *FLAGS)
    tok = Tokenizer.load(chat_run / "ckpt-0000001")
    save_checkpoint(
        tmp_path / "other", "ckpt-0000001", tiny_gpt(tok.n_vocab), tok, step=1, extra={"chat_template": "chatml"}
    )
    with pytest.raises(UserError, match="'chatml'"):
        chat(monkeypatch, capsys, io.StringIO(""), tmp_path / "other", *FLAGS)
    save_checkpoint(tmp_path / "base", "ckpt-0000001", tiny_gpt(tok.n_vocab), tok, step=1)  # no chat_template
    with pytest.warns(UserWarning, match="names no chat_template"):
        assert chat(monkeypatch, capsys, io.StringIO(""), tmp_path / "base", *FLAGS)[0] == 0
    with pytest.raises(ArgumentError, match="dtype"):  # the parser refuses it (RuntimeConfig's Literal type)
        chat(monkeypatch, capsys, io.StringIO(""), chat_run, "--dtype", "float16")


# ---- the real command, as a user's shell runs it ---------------------------------------------------


def pocketgpt(*args, stdin: str = ""):
    return subprocess.run(
        [sys.executable, "-m", "pocketgpt.cli.main", *map(str, args)],
        input=stdin,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_conversation_matches_in_process(chat_run, monkeypatch, capsys):
    expected = chat(monkeypatch, capsys, io.StringIO(SCRIPT), chat_run, *FLAGS)[1]
    r = pocketgpt("chat", chat_run, *FLAGS, stdin=SCRIPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected and expected.count("\n") >= 3
    one_shot = chat(monkeypatch, capsys, io.StringIO(""), chat_run, *FLAGS, "-p", "hello there")[1]
    r = pocketgpt("chat", chat_run, *FLAGS, "-p", "hello there")
    assert r.returncode == 0, r.stderr
    assert r.stdout == one_shot and expected.startswith(one_shot)  # the first turn had no history either


def test_subprocess_refuses_a_checkpoint_without_chat_tokens(tmp_path):
    plain = Tokenizer("bpe", [bytes([b]) for b in range(256)] + [None], {EOT: 256}, GPT2_PATTERN)
    save_checkpoint(tmp_path / "plain", "ckpt-0000001", tiny_gpt(plain.n_vocab), plain, step=1)
    r = pocketgpt("chat", tmp_path / "plain", *FLAGS, stdin="hi\n")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and r.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("pocketgpt: error: this checkpoint was not fine-tuned for chat")
