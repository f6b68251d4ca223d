"""The HTTP API: OpenAI-compatible completions and chat on FastAPI, streamed as server-sent events.

`create_app(checkpoint, config)` builds the app around one continuous-batching Scheduler (generate/scheduler.py);
`serve(checkpoint, config)` runs it with uvicorn. Both take a `ServeConfig` (pocketgpt/config.py: address, key,
limits, precision) and keyword overrides of its fields. Routes: GET /health, GET /metrics (Prometheus, metrics.py),
GET /v1/models, POST /v1/completions, POST /v1/chat/completions, POST /v1/embeddings, POST /tokenize and
/detokenize (llama-server's shapes; extras.py checks their bodies), and the chat page: GET / and GET /static/NAME
(the fixed files of http.PAGE_FILES, shipped in serve/static/, open without the key; the page sends the key it is
given to the /v1 routes). Each request is parsed (protocol.py), submitted to the scheduler, and its tokens formatted
(output.py); nothing here does math, and no endpoint reads or writes a file a request names. The chat extension `explain` adds to each choice (on its finishing
chunk when streamed) every answer token's probability, top alternatives and most-attended earlier tokens.
Errors are OpenAI error objects: 400 bad parameter or prompt too long, 401 missing / wrong key (with an api_key),
404 unknown model or route, 413 body too large, 429 queue full, 503 shutting down; framework validation errors
become 400 and a malformed request never yields a 5xx. A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketgpt.checkpoint import Checkpoint, load_checkpoint, prompt_bos
from pocketgpt.config import ServeConfig
from pocketgpt.errors import UserError
from pocketgpt.generate.engine import Engine
from pocketgpt.generate.scheduler import QueueFull, RequestHandle, Scheduler, SchedulerClosed, Token
from pocketgpt.generate.structured import ConstraintFactory
from pocketgpt.model.quant import is_quantized, quantize_model
from pocketgpt.serve import extras, schemas
from pocketgpt.serve.http import PAGE_FILES, install_error_handlers, page_file, read_json, unknown_model
from pocketgpt.serve.output import DONE, ChoiceText, Reply, explain_choice, sse, stop_check, text_logprobs, usage
from pocketgpt.serve.protocol import APIError, Job, bad, parse_job
from pocketgpt.serve.schemas import body

ERRORS = {200: schemas.OK_OR_STREAM, **schemas.errors(400, 401, 404, 413, 429, 503)}

try:
    from pocketgpt.serve.metrics import CONTENT_TYPE as METRICS_TYPE
    from pocketgpt.serve.metrics import Metrics
except ImportError:  # prometheus-client missing: /metrics says how to get it
    Metrics, METRICS_TYPE = None, ""


def model_id(ckpt: Checkpoint) -> str:
    """The name /v1/models lists: the run folder's name for a ckpt-* folder, else the folder's own."""
    p = Path(ckpt.path)
    return p.parent.name if p.name.startswith("ckpt-") and p.parent.name else p.name


def serve_config(config: ServeConfig | None = None, *, limits: ServeConfig | None = None, **overrides) -> ServeConfig:
    """`config` (or `limits`, its old name) with the fields named in `overrides` replaced; checked again."""
    if config is not None and limits is not None:
        raise TypeError("give config or limits (its old name), not both")
    base = config if config is not None else limits if limits is not None else ServeConfig()
    return dataclasses.replace(base, **overrides) if overrides else base


class Served:
    """What the routes share: the tokenizer, the scheduler, the model's name, the limits and the key."""

    def __init__(self, ckpt: Checkpoint, scheduler: Scheduler, config: ServeConfig, name: str):
        self.tokenizer, self.scheduler, self.limits, self.name = ckpt.tokenizer, scheduler, config, name
        self.state = "starting"  # -> ready (the scheduler runs) -> draining (shutting down)
        self.template = ckpt.meta.get("chat_template")
        self.block_size = scheduler.cfg.block_size
        self._key = config.api_key.encode() if config.api_key else None

    def check_key(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401,
                "You didn't provide an API key: send the header 'Authorization: Bearer KEY'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), self._key):
            raise APIError(
                401, "Incorrect API key provided.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "pocketgpt"}


def create_app(
    checkpoint, config: ServeConfig | None = None, *, limits: ServeConfig | None = None, **overrides
) -> FastAPI:
    """An app serving a checkpoint (a path, or a loaded `Checkpoint`); its scheduler runs while the app does.

    `config` holds the key, limits, device and dtype (host and port matter only to `serve`); keyword arguments
    replace its fields: `create_app(path, api_key="k", dtype="float32")`.
    """
    from pocketgpt.device import pick_dtype, setup_runtime

    cfg = serve_config(config, limits=limits, **overrides)
    if isinstance(checkpoint, Checkpoint):  # already loaded: it stays where it is
        ckpt = checkpoint
        dev = next(ckpt.model.parameters()).device
        dtype = pick_dtype(cfg.dtype, dev)
    else:
        dev, dtype = setup_runtime(cfg, verbose=False)
        ckpt = load_checkpoint(checkpoint, device=dev)
    if cfg.quantize == "int8" and not is_quantized(ckpt.model):
        quantize_model(ckpt.model)
    draft = load_checkpoint(cfg.draft, device=dev).model if cfg.draft else None
    engine = Engine(ckpt.model, device=dev, dtype=dtype, kernels=cfg.kernels, draft=draft)
    scheduler = Scheduler(engine, max_batch=cfg.max_batch, max_queue=cfg.max_queue, prefix_cache_mb=cfg.prefix_cache_mb)
    served = Served(ckpt, scheduler, cfg, cfg.model_name or model_id(ckpt))
    served.model = engine.model
    served.bos = prompt_bos(ckpt) if cfg.bos is None else cfg.bos
    served.metrics = Metrics(scheduler) if Metrics is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        served.state = "ready"
        yield
        served.state = "draining"
        scheduler.close()

    app = FastAPI(title="pocketgpt", lifespan=lifespan, docs_url=None, redoc_url=None)  # /openapi.json
    app.state.served = served
    install_error_handlers(app)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        if served.metrics is not None:
            route = request.scope.get("route")
            served.metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health():
        """200 {"status": "ok", "state": "ready"} while serving; 503 with state starting or draining otherwise."""
        body = {"status": "ok" if served.state == "ready" else served.state, "state": served.state}
        body.update(model=served.name, **scheduler.stats())
        return JSONResponse(body, status_code=200 if served.state == "ready" else 503)

    @app.get("/metrics", response_class=PlainTextResponse)  # Prometheus' text format
    async def metrics():
        if served.metrics is None:
            raise APIError(404, "/metrics needs prometheus-client: pip install 'pocketgpt[serve]'")
        return Response(served.metrics.render(), media_type=METRICS_TYPE)

    extras.install_routes(app, served)  # /tokenize, /detokenize, /v1/embeddings

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        served.check_key(request)
        return {"object": "list", "data": [served.model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        served.check_key(request)
        if name != served.name:
            raise unknown_model(name, served.name)
        return served.model_card()

    @app.get("/", include_in_schema=False)  # the chat page: for browsers, not in the API's schema
    async def chat_page():
        return page_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in PAGE_FILES:  # a fixed list: no path from the request reaches the disk
            raise StarletteHTTPException(404)
        return page_file(name)

    @app.post("/v1/completions", openapi_extra=body(schemas.COMPLETION), responses=ERRORS)
    async def completions(request: Request):
        return await _complete(request, served, chat=False)

    @app.post("/v1/chat/completions", openapi_extra=body(schemas.CHAT), responses=ERRORS)
    async def chat_completions(request: Request):
        return await _complete(request, served, chat=True)

    return app


async def _complete(request: Request, served: Served, *, chat: bool):
    served.check_key(request)
    body = await read_json(request, served.limits.max_body_bytes)
    name = body.get("model") if isinstance(body, dict) else None
    if isinstance(name, str) and name != served.name:
        raise unknown_model(name, served.name)
    job = parse_job(
        body, served.tokenizer, served.block_size, served.limits, chat=chat, template=served.template, bos=served.bos
    )
    handles = _submit(job, served)
    if served.metrics is not None:
        served.metrics.prompt_tokens.inc(sum(len(p) for p in job.prompts))
        for h in handles:
            h.timer = served.metrics.timer()
    reply = Reply(chat, served.name)
    if job.stream:  # the background task frees the rows of a client that left before the body started
        return StreamingResponse(
            _stream(job, handles, reply, served),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(_cancel_all, handles),
        )
    return await _collect(job, handles, reply, served, request)


def _submit(job: Job, served: Served) -> list[RequestHandle]:
    """Every sequence of the job queued, or none (429 / 503)."""
    loop = asyncio.get_running_loop()
    handles: list[RequestHandle] = []
    constraint = None
    if job.grammar is not None:
        try:
            constraint = ConstraintFactory(
                served.tokenizer, job.grammar, n_vocab=served.scheduler.cfg.vocab_size, end_ids=job.stop_ids[:1]
            )
        except UserError as e:
            raise bad(str(e), "response_format") from None
    try:
        for ids in job.prompts:  # choice index = prompt index * n + sample index
            handles += served.scheduler.submit_all(
                ids,
                job.sample,
                job.stop_ids,
                loop=loop,
                should_stop=stop_check(served.tokenizer, job.sample.stop),
                constraint=constraint,
            )
    except QueueFull:
        for h in handles:
            h.cancel()
        raise APIError(
            429,
            "The server is busy: too many requests are waiting. Retry shortly.",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    except SchedulerClosed:
        for h in handles:
            h.cancel()
        raise APIError(503, "The server is shutting down.", code="unavailable") from None
    return handles


async def merged(handles: list[RequestHandle]):
    """(choice index, Token) as tokens arrive from every handle, and (index, None) when a choice ends.
    Leaving early (a disconnect, an error) cancels every handle."""
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, h: RequestHandle) -> None:
        timer = getattr(h, "timer", None)
        try:
            async for t in h:
                if timer is not None:
                    timer.token()
                q.put_nowait((i, t))
            q.put_nowait((i, None))
        except Exception as e:  # the scheduler failed this sequence
            q.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, item = await q.get()
            if isinstance(item, Exception):
                raise item
            left -= item is None
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for h in handles:
            h.cancel()


async def _cancel_all(handles: list[RequestHandle]) -> None:
    for h in handles:
        h.cancel()


def _finish_reason(text: ChoiceText, handle: RequestHandle) -> str:
    return "stop" if text.hit_stop or handle.finish_reason != "length" else "length"


async def _collect(job: Job, handles: list[RequestHandle], reply: Reply, served: Served, request: Request):
    tok = served.tokenizer
    texts = [ChoiceText(tok, job.sample.stop) for _ in handles]

    async def run() -> None:
        stream = merged(handles)
        try:
            async for i, t in stream:
                texts[i].feed(t) if t is not None else texts[i].flush()
        finally:
            await stream.aclose()

    task = asyncio.ensure_future(run())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                return Response(status_code=499)  # the client left: run()'s cleanup cancels its rows
        try:
            task.result()
        except RuntimeError as e:
            raise APIError(500, str(e)) from None
    finally:
        task.cancel()
        for h in handles:
            h.cancel()
    choices = [
        {
            "index": i,
            "text": t.text,
            "finish_reason": _finish_reason(t, h),
            "logprobs": reply.logprobs(tok, t, job.logprobs),
        }
        for i, (t, h) in enumerate(zip(texts, handles))
    ]
    if job.echo:
        await _echo(job, choices, served)
    if job.explain is not None:
        for c, t in zip(choices, texts):
            c["explain"] = await _explain(job, served, c["index"], t)
    used = usage(sum(len(p) for p in job.prompts), sum(h.completion_tokens for h in handles))
    return JSONResponse(reply.full(choices, used))


async def _echo(job: Job, choices: list[dict], served: Served) -> None:
    """echo=true: each choice's text and log-probabilities start with its prompt's (what lm-evaluation-harness
    reads to score likelihoods). Tokens the server put before a text prompt (<|endoftext|>) condition the first
    echoed token but are not echoed."""
    tok, n = served.tokenizer, job.sample.num_samples
    echoed = {}
    for p in range(len(job.prompts)):
        ids = job.prompts[p]
        scored = await asyncio.to_thread(extras.prompt_logprobs, served.model, ids, job.logprobs or 0)
        toks = [Token(t, lp, top) for t, (lp, top) in zip(ids, scored)][job.echo_skip :]
        text = ChoiceText(tok, ())
        for t in toks:
            text.feed(t)
        text.flush()
        echoed[p] = (text, toks)
    for c in choices:
        text, toks = echoed[c["index"] // n]
        if c["logprobs"] is not None:
            head = text_logprobs(tok, toks, text.starts, bytes(text.buf))
            shift = len(text.text)
            for key in ("tokens", "token_logprobs", "top_logprobs"):
                c["logprobs"][key] = head[key] + c["logprobs"][key]
            c["logprobs"]["text_offset"] = head["text_offset"] + [o + shift for o in c["logprobs"]["text_offset"]]
        c["text"] = text.text + c["text"]


async def _explain(job: Job, served: Served, index: int, text: ChoiceText) -> dict:
    """The `explain` object of choice `index`: its prompt and answer through explain.token_report."""
    prompt = job.prompts[index // job.sample.num_samples]
    return await explain_choice(served.model, served.tokenizer, prompt, text, job.explain)


async def _stream(job: Job, handles: list[RequestHandle], reply: Reply, served: Served):
    """The SSE body; a disconnect cancels this generator, and with it every row of the request."""
    tok, inc = served.tokenizer, job.include_usage
    texts = [ChoiceText(tok, job.sample.stop) for _ in handles]
    stream = merged(handles)
    try:
        if reply.chat:
            for i in range(len(handles)):
                yield reply.chunk(i, None, first=True, include_usage=inc)
        async for i, t in stream:
            if t is None:
                tail = texts[i].flush()
                if tail:
                    yield reply.chunk(i, tail, include_usage=inc)
                why = (await _explain(job, served, i, texts[i])) if job.explain is not None else None
                finish = _finish_reason(texts[i], handles[i])
                yield reply.chunk(i, None, finish=finish, include_usage=inc, explain=why)
                continue
            piece = texts[i].feed(t)
            kept = texts[i].tokens and texts[i].tokens[-1] is t
            lp = reply.logprobs(tok, texts[i], job.logprobs, last=True) if kept else None
            if piece or lp:
                yield reply.chunk(i, piece, logprobs=lp, include_usage=inc)
        if inc:
            yield reply.usage_chunk(usage(sum(len(p) for p in job.prompts), sum(h.completion_tokens for h in handles)))
        yield DONE
    except RuntimeError as e:  # the scheduler failed: say so in the stream
        yield sse(APIError(500, str(e)).body())
    finally:
        await stream.aclose()
