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
import pytest
from serve_helpers import chat_ckpt, client  # noqa: F401  (fixtures)

from pocketgpt.cli.main import main
from pocketgpt.config import ServeConfig
from pocketgpt.errors import UserError
from pocketgpt.serve import ServeLimits
from pocketgpt.serve.app import serve_config
from pocketgpt.serve.server import startup_message

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_limits(capsys):
    try:
        code = main(["serve", "--help"])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr().out
    assert code == 0
    for flag in (
        "--host",
        "--port",
        "--api-key",
        "--max-batch",
        "--max-queue",
        "--max-tokens",
        "--max-prompt-tokens",
        "--max-body-bytes",
        "--max-n",
        "--model-name",
        "--dtype",
        "--device",
    ):
        assert flag in out
    assert "sequences decoded together" in out  # help text from ServeConfig's field docs
    assert "127.0.0.1" in out


def test_bad_flags_are_one_line_errors(capsys, chat_ckpt):
    assert main(["serve", str(chat_ckpt), "--max-batch", "0"]) == 2
    assert "max_batch must be a positive integer" in capsys.readouterr().err
    assert main(["serve", str(chat_ckpt), "--port", "70000"]) == 2
    assert main(["serve", str(chat_ckpt.parent / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _one_line_error(capsys, args: list[str]) -> str:
    """`pocketgpt ARGS` exits 2 with one line `pocketgpt: error: ...` on stderr and no traceback; that line."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("pocketgpt: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--port", "0"], ["port must be an integer in 1..65535", "got 0"]),
        (["--port", "70000"], ["port", "got 70000"]),
        (["--port", "-1"], ["port", "got -1"]),
        (["--max-batch", "0"], ["max_batch must be a positive integer", "got 0"]),
        (["--max-queue", "-1"], ["max_queue must be a positive integer", "got -1"]),
        (["--max_tokens", "-5"], ["max_tokens must be a positive integer", "got -5"]),
        (["--max-prompt-tokens", "0"], ["max_prompt_tokens", "got 0"]),
        (["--max-body-bytes", "-1"], ["max_body_bytes", "got -1"]),
        (["--max-n", "0"], ["max_n", "got 0"]),
        (["--device", "tpu"], ["device", "'tpu'"]),
        (["--dtype", "float16"], ["dtype", "float16"]),
        (["--api-key", ""], ["api_key is empty"]),
    ],
)
def test_bad_serve_config_values_are_one_line_errors(capsys, chat_ckpt, flags, words):
    line = _one_line_error(capsys, ["serve", chat_ckpt, *flags])
    for w in words:
        assert w in line, (w, line)


def test_a_bad_api_key_is_refused_without_echoing_it(capsys, chat_ckpt):
    line = _one_line_error(capsys, ["serve", chat_ckpt, "--api-key", "my secret"])
    assert "api_key" in line and "secret" not in line


def test_serve_config_is_the_one_schema():
    assert ServeLimits is ServeConfig  # the old name still works
    assert ServeConfig().host == "127.0.0.1" and ServeConfig().port == 8000
    for bad in (
        {"port": 0},
        {"port": 70000},
        {"port": True},
        {"max_queue": -3},
        {"max_batch": 0},
        {"max_prompt_tokens": -1},
        {"host": ""},
        {"dtype": "fp8"},
    ):
        with pytest.raises(UserError, match=next(iter(bad))):
            ServeConfig(**bad)
    base = ServeConfig(max_batch=2)
    assert serve_config(base, dtype="float32") == ServeConfig(max_batch=2, dtype="float32")
    assert serve_config(limits=base) is base
    with pytest.raises(UserError, match="max_tokens"):  # overrides are checked too
        serve_config(base, max_tokens=0)


def test_startup_message_names_the_chat_page_and_the_api():
    msg = startup_message("run", "127.0.0.1", 8123)
    assert "http://127.0.0.1:8123/\n" in msg and msg.endswith("http://127.0.0.1:8123/v1")
    assert "http://[::1]:8000/v1" in startup_message("run", "::1", 8000)
    wild = startup_message("run", "0.0.0.0", 8000)  # a wildcard bind: a URL this machine can open
    assert "all interfaces" in wild and "http://127.0.0.1:8000/" in wild


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_ready(proc, url: str) -> dict:
    """Poll /health until 200 (the server process must stay alive); its JSON."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            r = httpx.get(url + "/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)


def test_serve_in_a_subprocess(chat_ckpt):
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pocketgpt.cli.main",
            "serve",
            str(chat_ckpt.parent),
            "--port",
            str(port),
            "--max-batch",
            "2",
            "--dtype",
            "float32",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(proc, url)
        c = client(url)
        assert [m.id for m in c.models.list().data] == ["run"]  # the run folder's name
        r = c.chat.completions.create(model="run", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"chat page:    http://127.0.0.1:{port}/\n" in out
    assert f"API base URL: http://127.0.0.1:{port}/v1" in out
    assert "Traceback" not in out


def test_sigterm_drains_streams_in_flight(chat_ckpt):
    """SIGTERM while a stream is running: that stream still gets every token and [DONE], and the process exits
    after the drain, without a traceback."""
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pocketgpt.cli.main", "serve", str(chat_ckpt.parent), "--port", str(port)]
    cmd += ["--dtype", "float32", "--device", "cpu", "--max-tokens", "4000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_until_ready(proc, url)["state"] == "ready"
        from pocketgpt.checkpoint import load_checkpoint

        eot = load_checkpoint(chat_ckpt).tokenizer.eot_id  # banned: every stream runs to max_tokens
        body = {"prompt": "x", "max_tokens": 3000, "stream": True, "logit_bias": {str(eot): -100}, "temperature": 1.0}
        body["stream_options"] = {"include_usage": True}
        raw, signalled = b"", False
        with httpx.Client(base_url=url, timeout=120) as h:
            with h.stream("POST", "/v1/completions", json=body) as r:
                for chunk in r.iter_bytes():  # bytes: the model's random text may hold line separators
                    raw += chunk
                    if not signalled and raw.count(b"\n\ndata: ") >= 5:
                        proc.send_signal(signal.SIGTERM)
                        signalled = True
        events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
        assert signalled and events[-1] == b"[DONE]"
        usage = __import__("json").loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 3000  # every token, though the signal came after the fifth event
        code = proc.wait(timeout=60)
        out = proc.stdout.read()
        # uvicorn re-raises the signal once it has drained, so the exit status says "ended by SIGTERM"
        assert code in (0, -signal.SIGTERM) and "Traceback" not in out, out
        assert "Waiting for connections to close" in out and "Application shutdown complete" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
