"""Past its in-flight limit the server answers the OpenAI error object of a full queue, not uvicorn's plain 503."""

from __future__ import annotations

import asyncio

import httpx
from serve_helpers import chat_ckpt, make_app, running  # noqa: F401  (fixtures)

from pocketgpt.serve.server import InFlightLimit


def test_requests_beyond_the_in_flight_limit_get_an_openai_429(chat_ckpt):
    app = InFlightLimit(make_app(chat_ckpt), 2)

    async def main(url: str):
        release = asyncio.Event()

        async def slow_body():  # holds its request in flight until released
            yield b'{"model": "tiny", "prompt": "hi", '
            await release.wait()
            yield b'"max_tokens": 2}'

        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            held = [
                asyncio.create_task(
                    c.post("/v1/completions", content=slow_body(), headers={"content-type": "application/json"})
                )
                for _ in range(2)
            ]
            for _ in range(1000):
                if app.active == 2:
                    break
                await asyncio.sleep(0.01)
            busy = await c.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
            release.set()
            done = await asyncio.gather(*held)
            after = await c.get("/v1/models")
        return busy, done, after

    with running(app) as url:
        busy, done, after = asyncio.run(main(url))
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    err = busy.json()["error"]
    assert err["code"] == "queue_full" and err["type"] == "rate_limit_error" and "busy" in err["message"]
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    assert app.active == 0
