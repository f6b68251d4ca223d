"""`pocketgpt serve`: its --help, bad flags, and a real server in a subprocess answering the openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from serve_helpers import chat_ckpt, client  # noqa: F401  (fixtures)

from pocketgpt.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_limits(capsys):
    try:
        code = main(["serve", "--help"])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr().out
    assert code == 0
    for flag in ("--host", "--port", "--api-key", "--max-batch", "--max-queue", "--max-tokens", "--max-prompt-tokens"):
        assert flag in out
    assert "127.0.0.1" in out


def test_bad_flags_are_one_line_errors(capsys, chat_ckpt):
    assert main(["serve", str(chat_ckpt), "--max-batch", "0"]) == 2
    assert "max_batch must be a positive integer" in capsys.readouterr().err
    assert main(["serve", str(chat_ckpt), "--port", "70000"]) == 2
    assert main(["serve", str(chat_ckpt.parent / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_in_a_subprocess(chat_ckpt):
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pocketgpt.cli.main", "serve", str(chat_ckpt.parent), "--port",
                             str(port), "--max-batch", "2", "--dtype", "float32", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        c = client(url)
        assert [m.id for m in c.models.list().data] == ["run"]              # the run folder's name
        r = c.chat.completions.create(model="run", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}/v1" in out
    assert "Traceback" not in out
