"""Serving: an OpenAI-compatible HTTP API over the continuous-batching scheduler (FastAPI + uvicorn, the [serve] extra).

`create_app(checkpoint, config)` returns the ASGI app (app.py); `serve(checkpoint, config)` runs it (server.py); both
are imported on first use so that `import pocketgpt.serve` works without the extra). `config` is a `ServeConfig`
(pocketgpt/config.py: host, port, key, limits, precision; `ServeLimits` is its old name). The app is a leaf: it
parses, calls the scheduler (generate/scheduler.py) and formats; the model, sampling and chat template live elsewhere.
"""

from pocketgpt.config import ServeConfig
from pocketgpt.serve.protocol import APIError, ServeLimits


def __getattr__(name: str):
    if name == "create_app":
        from pocketgpt.serve import app

        return app.create_app
    if name == "serve":
        from pocketgpt.serve import server

        return server.serve
    raise AttributeError(f"module 'pocketgpt.serve' has no attribute {name!r}")


__all__ = ["create_app", "serve", "ServeConfig", "ServeLimits", "APIError"]
