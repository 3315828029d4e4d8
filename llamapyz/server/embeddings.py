"""/v1/embeddings."""

from __future__ import annotations

import asyncio
import base64

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..model.model import Model
from . import schema
from .engine import Job
from .http import engine_error, events, read_json, run_job, server_state
from .schema import ApiError
from .text_bounds import check_text_fits

# OpenAI's own limits per request, so a client that batches its inputs for OpenAI's API (up to 2,048 inputs,
# 300,000 tokens) gets its vectors here too rather than a 400. The token limit bounds the work one request
# can ask for whatever the context size: at most ~25 minutes of one slot for SmolLM2-135M on 2 cores (~200
# prefill tokens/s), during which the engine still runs other requests between its pieces.
MAX_INPUTS = 2048
MAX_TOTAL_TOKENS = 300_000


async def embeddings(request: Request) -> Response:
    """OpenAI embeddings: mean-pooled, L2-normalized final hidden states.

    Limits, checked before any work (each a 400 with param "input"): at most MAX_INPUTS (2,048) inputs, each
    of at most n_ctx tokens (a string too long for that whatever its tokens is refused untokenized), and at
    most MAX_TOTAL_TOKENS (300,000) tokens in all. The engine evaluates the inputs a piece at a time between
    other requests' decode steps, and gives its slot to a waiting request between two inputs; a client that
    goes away cancels the rest.
    """
    state = server_state(request)
    fields = schema.validate(await read_json(request), schema.EMBEDDING)
    raw = fields["input"]
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        raw = [raw]
    if not raw:
        raise ApiError(400, "input must not be empty", param="input")
    if len(raw) > MAX_INPUTS:
        raise ApiError(400, f"input has {len(raw)} items; at most {MAX_INPUTS} are allowed per request",
                       param="input", code="too_many_inputs")
    async with state.pool.use(fields["model"], request.is_disconnected) as served:  # loaded, if need be
        inputs = await run_in_threadpool(tokenize_inputs, served.model, raw)
        job = Job(prompt=[], generation=None, loop=asyncio.get_running_loop(), inputs=inputs)
        await run_job(served, job)
    vectors = None
    async for kind, value in events(job, request, served):
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
    return JSONResponse({"object": "list", "data": data, "model": served.alias,
                         "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


def tokenize_inputs(model: Model, raw: list) -> list[list[int]]:
    """Each input as token ids (strings tokenized, id lists checked), within the limits; run in a worker
    thread, once for all inputs. A string whose length alone shows it cannot fit in the context is refused
    before any tokenizing (`text_bounds`); tokenizing stops at the first input over a limit, so a request far
    over the token limit costs no more than the limit's worth of tokenizing."""
    for item in raw:
        if isinstance(item, str):
            check_text_fits(model, len(item), model.n_ctx, "an input", f"more than the context of {model.n_ctx}",
                            "input")
    inputs, n_total = [], 0
    for item in raw:
        if isinstance(item, str):
            tokens = model.tokenize(item)
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
        n_total += len(tokens)
        if n_total > MAX_TOTAL_TOKENS:
            raise ApiError(400, f"the inputs have more than {MAX_TOTAL_TOKENS} tokens in all (the limit per "
                                "request); split them over several requests", param="input", code="too_many_tokens")
        inputs.append(tokens)
    return inputs
