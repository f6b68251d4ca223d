"""Shared by the serving tests: a tiny chat checkpoint written to a temp folder, and real servers on free ports.

Import the fixtures into a test module (`from serve_helpers import chat_ckpt, server`) to use them (a nested
conftest.py would shadow the module name of tests/conftest.py; tests/cli/cli_helpers.py does the same).

`running(app)` runs uvicorn in a thread on a socket bound to port 0 (no port races) and yields the base URL;
the CLI test starts `pocketgpt serve` in a subprocess instead.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import torch
from conftest import make_text

from pocketgpt.checkpoint import load_checkpoint, save_checkpoint
from pocketgpt.config import ModelConfig
from pocketgpt.model import GPT
from pocketgpt.tokenizer import Tokenizer
from pocketgpt.tokenizer.chat import TEMPLATE

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
MODEL = "tiny"


@pytest.fixture(scope="session")
def chat_ckpt(tmp_path_factory):
    """A chat-capable checkpoint: a trained tokenizer (it holds the chat specials) and a tiny random GPT."""
    root = tmp_path_factory.mktemp("serve")
    tok = Tokenizer.train([make_text(200)], vocab_size=300)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.n_vocab))
    return save_checkpoint(root / "run", "ckpt-0000001", model, tok, step=1, extra={"chat_template": TEMPLATE})


def make_app(path, **kwargs):
    from pocketgpt.serve import create_app

    kwargs.setdefault("model_name", MODEL)
    kwargs.setdefault("dtype", "float32")  # what the references compute in, on every CPU
    return create_app(load_checkpoint(path), **kwargs)


@contextlib.contextmanager
def running(app):
    """Serve `app` with uvicorn on a free 127.0.0.1 port in a thread; yields "http://127.0.0.1:PORT"."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def client(url: str, key: str = "unused"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def server(chat_ckpt):
    """(base URL, app) of a server with default limits, shared by a test module."""
    app = make_app(chat_ckpt)
    with running(app) as url:
        yield url, app
