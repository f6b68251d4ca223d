"""The small routes' bodies and math: /tokenize, /detokenize (llama-server's shapes) and /v1/embeddings (OpenAI's).

    POST /tokenize     {"content": TEXT, "add_special": false}   -> {"tokens": [ids]}
                       add_special: true lets special strings in TEXT ("<|endoftext|>") become their ids
    POST /detokenize   {"tokens": [ids]}                          -> {"content": TEXT}
    POST /v1/embeddings {"input": str | [str] | [ids] | [[ids]], "encoding_format": "float" | "base64"}
                       -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "usage"}

An embedding is the mean over the input's tokens of the model's final hidden states (after the last layer norm,
before the head), in float32: the usual pooling for a decoder-only model. Every check raises a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import torch
from fastapi import Request

from pocketgpt.serve.protocol import bad

MAX_INPUTS = 64


def tokenize_request(body) -> tuple[str, bool]:
    if not isinstance(body, dict) or not isinstance(body.get("content"), str):
        raise bad('send {"content": "text to tokenize"}', "content")
    special = body.get("add_special", False)
    if not isinstance(special, bool):
        raise bad("add_special must be true or false", "add_special")
    return body["content"], special


def token_list(body, field: str, vocab: int) -> list[int]:
    ids = body.get(field) if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise bad(f'send {{"{field}": [token ids]}}', field)
    if any(not 0 <= t < vocab for t in ids):
        raise bad(f"token ids must be in 0..{vocab - 1}", field)
    return ids


def embedding_request(body, tokenizer, block_size: int) -> tuple[list[list[int]], str]:
    """The inputs as token id lists, and the encoding format."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    known = {"input", "model", "encoding_format", "user", "dimensions"}
    for k in body:
        if k not in known:
            raise bad(f"Unrecognized request argument supplied: {k:.60}", k)
    if body.get("dimensions") is not None:
        raise bad("dimensions is not supported: the embedding has the model's width", "dimensions")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad("encoding_format must be float or base64", "encoding_format")
    x = body.get("input")
    if isinstance(x, str):
        items = [x]
    elif isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x):
        items = [x]
    elif isinstance(x, list) and x:
        items = x
    else:
        raise bad("input must be a string, a list of strings, a list of token ids or a list of such lists", "input")
    if len(items) > MAX_INPUTS:
        raise bad(f"at most {MAX_INPUTS} inputs per request", "input")
    out = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            ids = tokenizer.encode(item)
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            if any(not 0 <= t < tokenizer.n_vocab for t in item):
                raise bad(f"input {k}: token ids must be in 0..{tokenizer.n_vocab - 1}", "input")
            ids = list(item)
        else:
            raise bad(f"input {k} must be a string or a list of token ids", "input")
        if not ids:
            raise bad(f"input {k} is empty", "input")
        if len(ids) > block_size:
            raise bad(f"input {k} has {len(ids)} tokens; this model's context is {block_size}", "input")
        out.append(ids)
    return out, fmt


@torch.inference_mode()
def embed(model, inputs: list[list[int]]) -> list[np.ndarray]:
    """Mean-pooled final hidden states, one input at a time (no padding to get wrong)."""
    device = next(model.parameters()).device
    vectors = []
    for ids in inputs:
        h = model.hidden(torch.tensor([ids], dtype=torch.long, device=device))[0]  # (T, C)
        vectors.append(h.float().mean(dim=0).cpu().numpy())
    return vectors


@torch.inference_mode()
def prompt_logprobs(model, ids: list[int], k: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
    """For each prompt token, its log-probability given the tokens before it and the k likeliest alternatives
    there (the first token has none: nothing comes before it). One forward over the prompt, float32 softmax."""
    device = next(model.parameters()).device
    logits, _ = model(torch.tensor([ids], dtype=torch.long, device=device))
    logp = torch.log_softmax(logits[0].float(), dim=-1).cpu()  # (T, V): row t predicts token t + 1
    nxt = torch.tensor(ids[1:], dtype=torch.long)
    picked = logp[:-1].gather(1, nxt[:, None])[:, 0].tolist()
    out: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
    if k:
        vals, idx = logp[:-1].topk(k, dim=-1)
        tops = [list(zip(i.tolist(), v.tolist())) for i, v in zip(idx, vals)]
    else:
        tops = [[] for _ in picked]
    out += list(zip(picked, tops))
    return out


def encode_vector(v: np.ndarray, fmt: str):
    if fmt == "base64":  # what the openai client decodes: little-endian float32
        return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in v]


def install_routes(app, served) -> None:
    """Add /tokenize, /detokenize and /v1/embeddings to the app (app.py's `Served` holds what they use)."""
    from pocketgpt.serve import schemas
    from pocketgpt.serve.http import read_json, unknown_model

    errors = schemas.errors(400, 401, 413)

    @app.post("/tokenize", openapi_extra=schemas.body(schemas.TOKENIZE), responses=errors)
    async def tokenize(request: Request) -> dict:
        served.check_key(request)
        body = await read_json(request, served.limits.max_body_bytes)
        text, special = tokenize_request(body)
        return {"tokens": served.tokenizer.encode(text, allowed_special="all" if special else frozenset())}

    @app.post("/detokenize", openapi_extra=schemas.body(schemas.DETOKENIZE), responses=errors)
    async def detokenize(request: Request) -> dict:
        served.check_key(request)
        body = await read_json(request, served.limits.max_body_bytes)
        return {"content": served.tokenizer.decode(token_list(body, "tokens", served.tokenizer.n_vocab))}

    @app.post(
        "/v1/embeddings", openapi_extra=schemas.body(schemas.EMBEDDINGS), responses=schemas.errors(400, 401, 404, 413)
    )
    async def embeddings(request: Request) -> dict:
        served.check_key(request)
        body = await read_json(request, served.limits.max_body_bytes)
        name = body.get("model") if isinstance(body, dict) else None
        if isinstance(name, str) and name != served.name:
            raise unknown_model(name, served.name)
        inputs, fmt = embedding_request(body, served.tokenizer, served.block_size)
        vectors = await asyncio.to_thread(embed, served.model, inputs)
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, fmt)} for i, v in enumerate(vectors)]
        n = sum(len(x) for x in inputs)
        return {"object": "list", "data": data, "model": served.name, "usage": {"prompt_tokens": n, "total_tokens": n}}
