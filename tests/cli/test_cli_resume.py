"""`pocketgpt train --resume`: a stopped run, or one killed with SIGKILL, ends with the same weights, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import REPO, assert_same_weights, cli, train_args, weights  # noqa: F401  (fixtures)
from conftest import TINY_TRAIN_FLAGS

SPEEDRUN_FLAGS = (
    "--train.optimizer",
    "muon",
    "--model.qk_norm",
    "true",
    "--model.pos_encoding",
    "rope",
    "--model.activation",
    "relu2",
    "--model.tie_embeddings",
    "false",
    "--model.bias",
    "false",
)


@pytest.mark.parametrize("extra", [(), SPEEDRUN_FLAGS], ids=["adamw", "muon-qknorm-rope-relu2-untied"])
def test_resume_gives_the_same_weights(cli, tmp_path, corpus_text, extra):
    """6 steps straight == 3 steps, then --resume to 6. The schedule decays to its floor at the last step, so a
    3-step run decays sooner than a 6-step one; warmup_steps=3 keeps the first 3 learning rates the same."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    straight, out = tmp_path / "straight", tmp_path / "run"
    code, _, err = cli(*train_args(corpus, straight, tmp_path / "cache", "--train.warmup_steps", 3, *extra))
    assert code == 0, err
    code, _, err = cli(
        *train_args(corpus, out, tmp_path / "cache", "--train.warmup_steps", 3, "--train.max_steps", 3, *extra)
    )
    assert code == 0, err
    assert (out / "LATEST").read_text().strip() == "ckpt-0000003"
    code, _, err = cli("train", "--out", out, "--resume", "--train.max_steps", 6)
    assert code == 0, err
    assert (out / "LATEST").read_text().strip() == "ckpt-0000006"
    assert_same_weights(weights(out), weights(straight))
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(ln) for ln in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [(r["loss"], r["lr"]) for r in rows] == [(r["loss"], r["lr"]) for r in ref]
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 6


KILL_STEPS = 60


def _train_cmd(corpus: Path, out: Path, cache: Path, *extra) -> list[str]:
    flags = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2]))
    flags.update(
        {
            "--train.max_steps": str(KILL_STEPS),
            "--train.save_every": "2",
            "--train.eval_every": "40",
            "--train.log_every": "5",
            "--train.threads": "1",
        }
    )
    return [
        sys.executable,
        "-m",
        "pocketgpt.cli.main",
        "train",
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--cache_dir",
        str(cache),
        *[x for kv in flags.items() for x in kv],
        *extra,
    ]


def _latest_step(out: Path) -> int:
    try:
        return int((out / "LATEST").read_text().strip().split("-")[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, corpus_text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    # the reference and the victim run side by side (one thread each, separate caches: no shared files)
    ref = subprocess.Popen(
        _train_cmd(corpus, ref_out, tmp_path / "cache-ref"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = subprocess.Popen(
        _train_cmd(corpus, out, tmp_path / "cache"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = random.randrange(2, KILL_STEPS // 2, 2)  # kill after this checkpoint, at a random moment
    try:
        deadline = time.monotonic() + 120
        while _latest_step(out) < target:
            assert victim.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, f"no checkpoint {target} within 120 s"
            time.sleep(0.002)
        time.sleep(random.uniform(0.0, 0.05))  # mid-step, mid-save or mid-eval
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    assert target <= _latest_step(out) < KILL_STEPS and not (out / "final.json").exists()

    resumed = subprocess.run(
        _train_cmd(corpus, out, tmp_path / "cache", "--resume"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    ref.stderr.close()

    assert (out / "LATEST").read_text().strip() == f"ckpt-{KILL_STEPS:07d}"
    assert_same_weights(weights(out), weights(ref_out))
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == KILL_STEPS
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp folder from the kill
