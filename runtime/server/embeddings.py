"""/v1/embeddings."""

from __future__ import annotations

import asyncio
import base64

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import schema
from .engine import Job
from .http import endpoint, engine_error, events, read_json, ready_state, run_job
from .schema import ApiError


@endpoint
async def embeddings(request: Request) -> Response:
    """OpenAI embeddings: mean-pooled, L2-normalized final hidden states."""
    state = ready_state(request)
    fields = schema.validate(await read_json(request), schema.EMBEDDING)
    model = state.model
    raw = fields["input"]
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        raw = [raw]
    if not raw:
        raise ApiError(400, "input must not be empty", param="input")
    inputs = []
    for item in raw:
        if isinstance(item, str):
            tokens = await run_in_threadpool(model.tokenize, item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            tokens = item
            if min(tokens) < 0 or max(tokens) >= model.n_vocab:
                raise ApiError(400, f"input token ids must be in [0, {model.n_vocab})", param="input")
        else:
            raise ApiError(400, "input must be a string, a list of strings or a list of token id lists", param="input")
        if not tokens:
            raise ApiError(400, "input must not contain empty strings", param="input")
        if len(tokens) > model.n_ctx:
            raise ApiError(400, f"an input has {len(tokens)} tokens, more than the context of {model.n_ctx}",
                           param="input", code="context_length_exceeded", n_prompt_tokens=len(tokens),
                           n_ctx=model.n_ctx)
        inputs.append(tokens)
    job = Job(prompt=[], generation=None, loop=asyncio.get_running_loop(), inputs=inputs)
    await run_job(state, job)
    vectors = None
    async for kind, value in events(job, request, state):
        if kind == "error":
            raise engine_error(value)
        if kind == "embeddings":
            vectors = value
    if vectors is None:
        raise ApiError(500, "the embedding request was cancelled")
    as_base64 = fields["encoding_format"] == "base64"
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if as_base64 else v.tolist()}
            for i, v in enumerate(vectors)]
    n_tokens = sum(len(t) for t in inputs)
    return JSONResponse({"object": "list", "data": data, "model": state.model_alias,
                         "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})
