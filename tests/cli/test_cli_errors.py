"""Bad input to `pocketgpt`: exit status 2, one line on stderr naming the problem, no traceback, no debris."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import REPO, assert_no_run, assert_user_error, ckpt_of, cli, run_copy, snapshot, train_args, trained  # noqa: F401  (fixtures)


def test_missing_corpus(cli, tmp_path):
    out = tmp_path / "run"
    assert_user_error(cli(*train_args(tmp_path / "nope.txt", out, tmp_path / "c")), "not found", "nope.txt")
    assert_no_run(out)
    assert_user_error(cli("tokenizer", "train", "--data", tmp_path / "nope.txt", "--out", tmp_path / "tok"), "nope.txt")
    assert not (tmp_path / "tok").exists()


def test_empty_corpus(cli, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "run"
    assert_user_error(cli(*train_args(empty, out, tmp_path / "c")), "empty", "empty.txt")
    assert_no_run(out)
    tok = tmp_path / "tok"
    assert_user_error(cli("tokenizer", "train", "--data", empty, "--out", tok), "empty")
    assert not tok.exists()


def _binary(path: Path) -> None:
    path.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4000)) + b"\0")


def test_folder_with_only_a_binary_file(cli, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _binary(folder / "blob.txt")
    out = tmp_path / "run"
    assert_user_error(cli(*train_args(folder, out, tmp_path / "c")), "binary")
    assert_no_run(out)


def test_folder_with_a_binary_and_a_text_file(cli, tmp_path, corpus_text):
    folder = tmp_path / "data"
    folder.mkdir()
    _binary(folder / "blob.txt")
    (folder / "text.txt").write_text(corpus_text, encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = cli(*train_args(folder, out, tmp_path / "c", "--train.max_steps", 2))
    assert code == 0, err
    warns = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warns) == 1 and "blob.txt" in warns[0], err
    assert "Traceback" not in err
    assert (out / "LATEST").exists()


def test_corpus_too_small_for_the_context(cli, tmp_path, corpus_text):
    small = tmp_path / "small.txt"
    small.write_text(corpus_text[:200], encoding="utf-8")
    out = tmp_path / "run"
    assert_user_error(cli(*train_args(small, out, tmp_path / "c", "--model.block_size", 512)), "too small", "513")
    assert_no_run(out)


def test_vocab_below_the_byte_alphabet(cli, corpus_file, tmp_path):
    out = tmp_path / "run"
    assert_user_error(
        cli(*train_args(corpus_file, out, tmp_path / "c", "--tokenizer.vocab_size", 100)), "vocab_size", "100"
    )
    assert_no_run(out)
    assert_user_error(
        cli("tokenizer", "train", "--data", corpus_file, "--out", tmp_path / "tok", "--vocab_size", 100),
        "vocab_size",
        "100",
    )
    assert not (tmp_path / "tok").exists()


def test_checkpoint_missing(cli, tmp_path):
    assert_user_error(cli("generate", tmp_path / "nope", "--prompt", "x"), "not found", "nope")
    assert_user_error(cli("eval", tmp_path / "nope", "--data", tmp_path / "nope"), "not found")
    (tmp_path / "empty_dir").mkdir()
    assert_user_error(cli("generate", tmp_path / "empty_dir"), "not a pocketgpt checkpoint")


def test_latest_points_to_a_missing_checkpoint(cli, run_copy):
    shutil.rmtree(ckpt_of(run_copy))
    assert_user_error(cli("generate", run_copy, "--prompt", "x"), "LATEST", "missing")


def test_truncated_checkpoint(cli, run_copy, tmp_path):
    f = ckpt_of(run_copy) / "model.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    assert_user_error(cli("generate", run_copy, "--prompt", "x"), "truncated or corrupt", "model.safetensors")
    data = tmp_path / "d.txt"
    data.write_text("some text to evaluate on " * 20)
    assert_user_error(cli("eval", run_copy, "--data", data), "truncated or corrupt")


def test_truncated_train_state_refuses_resume(cli, run_copy):
    f = ckpt_of(run_copy) / "train_state.pt"
    f.write_bytes(f.read_bytes()[:1000])
    before = snapshot(ckpt_of(run_copy))
    assert_user_error(cli("train", "--out", run_copy, "--resume", "--train.max_steps", 9), "train_state.pt")
    assert snapshot(ckpt_of(run_copy)) == before


def test_resume_from_a_checkpoint_without_train_state(cli, run_copy):
    (ckpt_of(run_copy) / "train_state.pt").unlink()
    assert_user_error(cli("train", "--out", run_copy, "--resume", "--train.max_steps", 9), "training state")


def test_checkpoint_from_another_vocabulary(cli, run_copy):
    f = ckpt_of(run_copy) / "config.json"
    meta = json.loads(f.read_text())
    meta["model"]["vocab_size"] = 200  # the tokenizer has 300
    f.write_text(json.dumps(meta))
    assert_user_error(cli("generate", run_copy, "--prompt", "x"), "vocabular")


def test_unknown_config_key(cli, corpus_file, tmp_path):
    out = tmp_path / "run"
    assert_user_error(cli(*train_args(corpus_file, out, tmp_path / "c", "--model.bogus", 1)), "bogus")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: 2\n  bogus: 1\n")
    assert_user_error(cli("train", "--data", corpus_file, "--out", out, "--config", bad), "bogus")
    assert_no_run(out)


def test_wrong_type(cli, corpus_file, tmp_path):
    out = tmp_path / "run"
    assert_user_error(cli(*train_args(corpus_file, out, tmp_path / "c", "--model.n_layer", "abc")), "n_layer", "abc")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: lots\n")
    assert_user_error(cli("train", "--data", corpus_file, "--out", out, "--config", bad), "max_steps")
    assert_user_error(cli(*train_args(corpus_file, out, tmp_path / "c", "--model.n_head", 3)), "n_head", "3")
    assert_no_run(out)


def test_unknown_preset(cli, corpus_file, tmp_path):
    out = tmp_path / "run"
    assert_user_error(cli("train", "--preset", "huge", "--data", corpus_file, "--out", out), "preset", "huge", "tiny")
    assert_no_run(out)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--temperature", "-1"], ["temperature", "-1"]),
        (["--temperature", "nan"], ["temperature"]),
        (["--top-p", "0"], ["top_p", "0"]),
        (["--top-p", "1.5"], ["top_p", "1.5"]),
        (["--max-new-tokens", "-1"], ["max_new_tokens", "-1"]),
        (["--top-k", "-1"], ["top_k", "-1"]),
    ],
)
def test_bad_sampling_flags(cli, trained, flags, words):
    assert_user_error(cli("generate", trained, "--prompt", "x", *flags), *words)


def test_existing_run_without_resume(cli, run_copy, tmp_path):
    before = snapshot(run_copy)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some other text. " * 500)
    assert_user_error(cli(*train_args(corpus, run_copy, tmp_path / "c")), "already", "--resume")
    assert snapshot(run_copy) == before


def test_console_script_exit_status(tmp_path):
    """The real process: status 2 and one line on stderr, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-m", "pocketgpt.cli.main", "generate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "checkpoint not found" in p.stderr
    assert "Traceback" not in p.stderr
