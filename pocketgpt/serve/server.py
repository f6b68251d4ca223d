"""Running the app: `serve()` binds uvicorn (a busy port or a bad host is one line), limits the requests in flight
(an OpenAI 429 past the limit, not uvicorn's plain-text 503) and prints where the chat page and the API are.
The routes live in app.py.
"""

from __future__ import annotations

import ipaddress
import warnings

from fastapi.responses import JSONResponse

from pocketgpt.config import ServeConfig
from pocketgpt.errors import UserError
from pocketgpt.serve.app import create_app, serve_config
from pocketgpt.serve.protocol import APIError


def serve(
    checkpoint,
    config: ServeConfig | None = None,
    *,
    limits: ServeConfig | None = None,
    log_level: str = "info",
    **overrides,
) -> None:
    """Load the checkpoint and serve it with uvicorn until interrupted (loopback only unless the host says).

    Once the server listens it prints the chat page's URL and the API's base URL."""
    import uvicorn

    cfg = serve_config(config, limits=limits, **overrides)
    if not _loopback(cfg.host):
        warnings.warn(
            f"serving on {cfg.host}: other machines can reach this server"
            + ("" if cfg.api_key else "; set --api-key to require a key"),
            stacklevel=2,
        )
    app = create_app(checkpoint, cfg)
    banner = startup_message(app.state.served.name, cfg.host, cfg.port)

    served = app.state.served

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # listening now: the URLs work
                print(banner, flush=True)

        def handle_exit(self, sig, frame) -> None:  # SIGTERM / SIGINT: /health says so while requests drain
            served.state = "draining"
            super().handle_exit(sig, frame)

    in_flight = max(64, 4 * (cfg.max_batch + cfg.max_queue))
    server = Server(
        uvicorn.Config(
            InFlightLimit(app, in_flight),
            host=cfg.host,
            port=cfg.port,
            log_level=log_level,
            server_header=False,
            timeout_graceful_shutdown=cfg.drain_timeout_s,
            limit_concurrency=2 * in_flight,
        )
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    except SystemExit:  # uvicorn's exit when it cannot bind (it logged why)
        if server.started:
            raise
    if not server.started:
        raise UserError(f"could not serve on {cfg.host}:{cfg.port} (see the message above)")


class InFlightLimit:
    """ASGI wrapper: at most `limit` HTTP requests in flight (a stream counts until its end); beyond, the OpenAI
    error object of a full queue (429, Retry-After) instead of uvicorn's plain-text 503 (its limit_concurrency,
    kept at twice this as a guard against idle connections)."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            busy = APIError(
                429, "The server is busy: too many requests are in flight. Retry shortly.", code="queue_full"
            )
            return await JSONResponse(busy.body(), 429, headers={"Retry-After": "1"})(scope, receive, send)
        self.active += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.active -= 1

        async def send_then_release(message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()  # before the last byte leaves: a client that saw the end never finds its slot taken
            await send(message)

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            release()


def startup_message(name: str, host: str, port: int) -> str:
    """What `pocketgpt serve` prints once it listens: the chat page's URL and the OpenAI base URL."""
    base = f"http://{_url_host(host)}:{port}"
    where = " (all interfaces)" if _unspecified(host) else ""
    return f"pocketgpt: serving {name} on {host}:{port}{where}\n  chat page:    {base}/\n  API base URL: {base}/v1"


def _url_host(host: str) -> str:
    """The host as a URL writes it: a wildcard bind as this machine's loopback address, IPv6 in brackets."""
    if _unspecified(host):
        host = "::1" if ":" in host else "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
