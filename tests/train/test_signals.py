"""Ctrl-C and SIGTERM during training save a checkpoint and exit cleanly; the run then resumes. Also torch.compile."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_TRAIN_FLAGS


def flags(n_steps: int) -> list[str]:
    out = list(TINY_TRAIN_FLAGS)
    i = out.index("--train.max_steps")
    out[i + 1] = str(n_steps)
    for name in ("--train.save_every", "--train.eval_every"):
        out[out.index(name) + 1] = "0"  # no periodic saves: the signal must cause the save
    return out


# SIGINT takes the same handler as SIGTERM: slow-marked (`make test-all` runs it) to keep `make test` under 10 min
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, corpus_file, sig):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pocketgpt.cli.main",
        "train",
        "--data",
        str(corpus_file),
        "--out",
        str(out),
        "--cache_dir",
        str(tmp_path / "cache"),
        *flags(100000),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopped at step" in stdout
    latest = (out / "LATEST").read_text().strip()
    step = json.loads((out / latest / "config.json").read_text())["step"]
    assert step >= 3 and latest == f"ckpt-{step:07d}"
    # the saved run continues from where it stopped
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "pocketgpt.cli.main",
            "train",
            "--out",
            str(out),
            "--resume",
            "--train.max_steps",
            str(step + 2),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert code.returncode == 0, code.stderr
    assert (out / f"ckpt-{step + 2:07d}").exists()


@pytest.mark.slow
def test_torch_compile_trains(tmp_path, corpus_file, run_cli):
    code, out, err = run_cli(
        "train",
        "--data",
        corpus_file,
        "--out",
        tmp_path / "run",
        "--cache_dir",
        tmp_path / "c",
        *flags(3),
        "--train.compile",
        "true",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "final.json").read_text())["step"] == 3
