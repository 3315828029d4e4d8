"""/v1/chat/completions and /v1/completions: a job per request (a chat's: `chat_job`), answered as one JSON
object or streamed."""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..chat.reply import read_reply, reply_stream
from ..decode.generation import Step
from ..version import __version__
from . import schema
from .chat_job import start_chat_job
from .http import collect_steps, read_json, run_job, server_state, sse_response
from .jobs import chat_logprob, completion_prompt, make_job, token_text, usage


async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions, streaming or not, with tools and structured outputs."""
    fields = schema.validate(await read_json(request), schema.CHAT, server_state(request).sampling_defaults)
    run = await start_chat_job(request, fields, fields["chat_template_kwargs"])
    served, model, job, tools, logprobs = run.served, run.model, run.job, run.tools, run.logprobs
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": ident, "created": created, "model": served.alias,
            "system_fingerprint": f"llamapyz-{__version__}"}
    if fields["stream"]:
        reader = reply_stream(tools)  # None: the reply is content as it comes

        def chunk(step: Step) -> dict | None:
            delta = tool_delta(reader.feed(step.text)) if reader is not None else {"content": step.text}
            if not any(delta.values()) and logprobs is None:  # nothing to say (text held back)
                return None
            return {"index": 0, "delta": delta, "finish_reason": None,
                    "logprobs": {"content": [chat_logprob(model, step)]} if logprobs is not None else None}

        def last(finish: str | None) -> dict:
            delta = tool_delta(reader.finish()) if reader is not None else {}
            if reader is not None and reader.n_calls and finish == "stop":
                finish = "tool_calls"
            return {"index": 0, "delta": delta, "logprobs": None,
                    "finish_reason": finish}

        opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return sse_response(job, request, served, fields, {**base, "object": "chat.completion.chunk"}, [opening],
                            chunk, last)

    steps = await collect_steps(job, request, served)
    text, finish = "".join(s.text for s in steps), steps[-1].finish_reason if steps else None
    reply = read_reply(text, tools)
    message = reply.message()
    if reply.calls:
        finish = "tool_calls" if finish == "stop" else finish
    return JSONResponse({
        **base, "object": "chat.completion",
        "choices": [{"index": 0, "message": message,
                     "logprobs": {"content": [chat_logprob(model, s) for s in steps]} if logprobs is not None
                     else None,
                     "finish_reason": finish}],
        "usage": usage(job), "timings": job.timings.as_dict()})


def tool_delta(events: list[tuple]) -> dict:
    """A reply reader's events as one chat delta: content text, reasoning_content text and tool_calls pieces
    (OpenAI's shape: the first piece of a call carries its index, id, type and name; later ones add to its
    arguments)."""
    content, reasoning, calls = [], [], []
    for event in events:
        if event[0] == "content":
            content.append(event[1])
        elif event[0] == "reasoning":
            reasoning.append(event[1])
        elif event[0] == "call":
            calls.append({"index": event[1], "id": event[2], "type": "function",
                          "function": {"name": event[3], "arguments": ""}})
        elif calls and calls[-1]["index"] == event[1]:
            calls[-1]["function"]["arguments"] += event[2]
        else:
            calls.append({"index": event[1], "function": {"arguments": event[2]}})
    delta: dict = {"content": "".join(content)} if content else {}
    if reasoning:
        delta["reasoning_content"] = "".join(reasoning)
    if calls:
        delta["tool_calls"] = calls
    return delta


async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions, streaming or not."""
    state = server_state(request)
    fields = schema.validate(await read_json(request), schema.COMPLETION, state.sampling_defaults)
    async with state.pool.use(fields["model"], request.is_disconnected) as served:  # loaded, if need be
        model = served.model
        prompt = await run_in_threadpool(completion_prompt, fields["prompt"], model)
        logprobs = fields["logprobs"]
        job = await run_in_threadpool(make_job, served, fields, prompt, logprobs, "prompt", asyncio.get_running_loop())
        await run_job(served, job)
    ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    base = {"id": ident, "object": "text_completion", "created": created, "model": served.alias,
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
        return sse_response(job, request, served, fields, base, opening, chunk,
                            lambda finish: {"index": 0, "text": "", "logprobs": None, "finish_reason": finish})

    steps = await collect_steps(job, request, served)
    return JSONResponse({
        **base,
        "choices": [{"index": 0, "text": echo + "".join(s.text for s in steps),
                     "logprobs": logprob_block(steps, len(echo)) if logprobs is not None else None,
                     "finish_reason": steps[-1].finish_reason if steps else "length"}],
        "usage": usage(job), "timings": job.timings.as_dict()})
