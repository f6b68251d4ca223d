"""The HTTP plumbing the routes share: OpenAI error objects for every failure (install_error_handlers), reading a
JSON body within a size limit (read_json: 413 beyond), the unknown-model 404, and the chat page's fixed files.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pocketgpt.serve.protocol import APIError, bad

DRAIN_BYTES = 16 << 20  # an oversized body is read (and dropped) up to this, so the client sees the 413
STATIC = Path(__file__).with_name("static")
PAGE_HEADERS = {  # the page loads nothing from elsewhere and runs no inline script
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


PAGE_FILES = {  # everything the chat page is made of; nothing else is ever served from disk
    "index.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "tokens.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}


def page_file(name: str) -> FileResponse:
    media_type = PAGE_FILES[name]
    path = STATIC / name
    if not path.is_file():
        raise APIError(500, f"the chat page's file {name} is missing from this installation of pocketgpt")
    return FileResponse(path, media_type=media_type, headers=PAGE_HEADERS)


def unknown_model(name: str, served: str) -> APIError:
    return APIError(
        404,
        f"The model '{name[:100]}' does not exist; this server serves '{served}'.",
        param="model",
        code="model_not_found",
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(bad("the request is malformed: check the parameters' names and types").body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {
            404: f"Unknown route {request.method} {request.url.path[:200]}",
            405: f"Method {request.method} is not allowed on {request.url.path[:200]}",
        }.get(exc.status_code, "request refused")
        body = APIError(exc.status_code, message).body()
        body["error"]["type"] = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: say so, leak nothing
        return JSONResponse(APIError(500, "internal server error").body(), status_code=500)


async def read_json(request: Request, limit: int):
    """The body parsed as JSON, at most `limit` bytes (413 beyond: read and dropped up to DRAIN_BYTES)."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    data, seen = bytearray(), 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                too_big = True
            if too_big:
                data = bytearray()
                if seen > max(DRAIN_BYTES, limit):
                    break
            else:
                data += chunk
    except ClientDisconnect:
        raise bad("the client went away while sending the body") from None
    if too_big:
        raise APIError(
            413, f"The request body is larger than this server's limit of {limit} bytes.", code="request_too_large"
        )
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError):
        raise bad(
            "We could not parse the JSON body of your request: send a JSON object with "
            "'Content-Type: application/json'."
        ) from None
