"""/v1/chat/completions and /v1/completions: a job per request, answered as one JSON object or streamed."""

from __future__ import annotations

import time
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..generation import Step
from . import schema
from .http import collect_steps, endpoint, read_json, ready_state, run_job, sse_response
from .jobs import chat_logprob, chat_prompt, completion_prompt, make_job, token_text, usage


@endpoint
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions, streaming or not."""
    state = ready_state(request)
    fields = schema.validate(await read_json(request), schema.CHAT, state.sampling_defaults)
    model = state.model
    prompt = await run_in_threadpool(chat_prompt, fields["messages"], model)  # CPU work: off the event loop
    logprobs = fields["top_logprobs"] if fields["logprobs"] else None
    job = make_job(state, fields, prompt, logprobs, "messages", model.chat_template.end_of_turn)
    await run_job(state, job)
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": ident, "created": created, "model": state.model_alias,
            "system_fingerprint": f"llamapyz-{__version__}"}

    if fields["stream"]:
        def chunk(step: Step) -> dict | None:
            if not step.text and logprobs is None:
                return None
            return {"index": 0, "delta": {"content": step.text}, "finish_reason": None,
                    "logprobs": {"content": [chat_logprob(model, step)]} if logprobs is not None else None}

        opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return sse_response(job, request, state, fields, {**base, "object": "chat.completion.chunk"}, [opening],
                            chunk, lambda finish: {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish})

    steps = await collect_steps(job, request, state)
    return JSONResponse({
        **base, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(s.text for s in steps)},
                     "logprobs": {"content": [chat_logprob(model, s) for s in steps]} if logprobs is not None
                     else None,
                     "finish_reason": steps[-1].finish_reason if steps else None}],
        "usage": usage(job), "timings": job.timings.as_dict()})


@endpoint
async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions, streaming or not."""
    state = ready_state(request)
    fields = schema.validate(await read_json(request), schema.COMPLETION, state.sampling_defaults)
    model = state.model
    prompt = await run_in_threadpool(completion_prompt, fields["prompt"], model)
    logprobs = fields["logprobs"]
    job = make_job(state, fields, prompt, logprobs, "prompt")
    await run_job(state, job)
    ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": ident, "object": "text_completion", "created": created, "model": state.model_alias,
            "system_fingerprint": f"llamapyz-{__version__}"}
    echo = model.detokenize(prompt) if fields["echo"] else ""

    def logprob_block(steps: list[Step], offset: int) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        for step in steps:
            piece = token_text(model, step.token)
            tokens.append(piece)
            values.append(step.logprob)
            tops.append({token_text(model, t): lp for t, lp in step.top_logprobs or []})
            offsets.append(offset)
            offset += len(piece)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    if fields["stream"]:
        offset = len(echo)

        def chunk(step: Step) -> dict | None:
            nonlocal offset
            if not step.text and logprobs is None:
                return None
            block = logprob_block([step], offset) if logprobs is not None else None
            offset += len(step.text)
            return {"index": 0, "text": step.text, "logprobs": block, "finish_reason": None}

        opening = [{"index": 0, "text": echo, "logprobs": None, "finish_reason": None}] if echo else []
        return sse_response(job, request, state, fields, base, opening, chunk,
                            lambda finish: {"index": 0, "text": "", "logprobs": None, "finish_reason": finish})

    steps = await collect_steps(job, request, state)
    return JSONResponse({
        **base,
        "choices": [{"index": 0, "text": echo + "".join(s.text for s in steps),
                     "logprobs": logprob_block(steps, len(echo)) if logprobs is not None else None,
                     "finish_reason": steps[-1].finish_reason if steps else "length"}],
        "usage": usage(job), "timings": job.timings.as_dict()})
