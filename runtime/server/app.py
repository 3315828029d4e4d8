"""The HTTP side: a Starlette app speaking OpenAI's API (plus llama.cpp's extras) in front of the engine.

Every handler validates its request, turns it into an engine `Job`, and relays the job's events as one
JSON response or as server-sent events. Nothing here touches the model's weights: tokenizing and chat
templates run here, forward passes only on the engine thread.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import mimetypes
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__, cpu
from ..chat import ChatTemplateError
from ..errors import ContextOverflowError
from ..generation import Generation, Step
from ..json_constraint import JsonConstraint
from ..model.model import Model
from ..sampling import SamplingParams
from . import schema
from .engine import Engine, Job, Overloaded
from .schema import ApiError

log = logging.getLogger("llamapyz.server")

MAX_STOP_STRINGS = 16
DISCONNECT_POLL_S = 0.25


@dataclass
class ServerState:
    """What the handlers share. `engine` is None while the model is loading (then /health says 503)."""

    model_alias: str
    api_key: str | None = None
    engine: Engine | None = None
    load_error: str | None = None
    load_hint: str | None = None
    max_body_bytes: int = 16 << 20  # a request body above it is a 413
    sampling_defaults: dict[str, Any] = field(default_factory=dict)  # the server's --temp etc.
    webui: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (content, media type)
    started: float = field(default_factory=time.time)

    @property
    def model(self) -> Model:
        return self.engine.model


def load_webui(directory: Path | None) -> dict[str, tuple[bytes, str]]:
    """The static UI's files, read once into memory (works the same from a directory or an archive)."""
    files: dict[str, tuple[bytes, str]] = {}
    if directory is None or not directory.is_dir():
        return files
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in (".html", ".css", ".js", ".svg", ".ico", ".png", ".json"):
            media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if media.startswith("text/") or media == "application/javascript":
                media += "; charset=utf-8"
            files[path.relative_to(directory).as_posix()] = (path.read_bytes(), media)
    return files


# --- plumbing ---------------------------------------------------------------------------------------------

def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def read_json(request: Request) -> object:
    limit = request.app.state.llamapyz.max_body_bytes
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large",
                       type="invalid_request_error")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no length to check up front
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, integers of 5,000 digits, nesting 1,000 deep
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
    try:  # a lone surrogate ("\ud800") parses, but is no character: no text of ours may hold one
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                            "text") from None
    return value


def ready_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.llamapyz
    if state.engine is None:
        raise ApiError(503, state.load_error or "the model is still loading", code="loading")
    return state


def endpoint(handler):
    """Wrap a handler: ApiError (and any surprise) becomes an OpenAI-shaped error, never a traceback."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except Exception:  # a bug must not take the server down; say so in the log and the response
            log.exception("error while handling %s %s", request.method, request.url.path)
            return error_response(ApiError(500, "internal server error (see the server log)"))

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- turning a request into a job -------------------------------------------------------------------------

def sampling_params(fields: dict, model: Model) -> SamplingParams:
    bias = {}
    for key, value in (fields["logit_bias"] or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        if not 0 <= token < model.n_vocab or not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ApiError(400, f"logit_bias: token {key} is outside the vocabulary or its bias is not a number",
                           param="logit_bias")
        bias[token] = float(max(-100.0, min(100.0, value)))
    try:
        return SamplingParams(temperature=fields["temperature"], top_k=fields["top_k"], top_p=fields["top_p"],
                              min_p=fields["min_p"], repeat_penalty=fields["repeat_penalty"],
                              presence_penalty=fields["presence_penalty"],
                              frequency_penalty=fields["frequency_penalty"], repeat_last_n=fields["repeat_last_n"],
                              logit_bias=bias, seed=None if (fields["seed"] or 0) < 0 else fields["seed"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def stop_strings(value: str | list | None) -> list[str]:
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    return stops


def response_format(value: dict | None) -> bool:
    """True when the output must be one JSON object."""
    kind = (value or {}).get("type", "text")
    if kind not in ("text", "json_object"):
        raise ApiError(400, f"response_format type {kind!r} is not supported (use 'text' or 'json_object')",
                       param="response_format")
    return kind == "json_object"


def check_prompt_fits(prompt: list[int], model: Model, param: str) -> None:
    if len(prompt) >= model.n_ctx:
        raise ApiError(400, f"the prompt has {len(prompt)} tokens, which does not leave room for an answer in the "
                       f"context of {model.n_ctx} tokens", param=param, code="context_length_exceeded",
                       n_prompt_tokens=len(prompt), n_ctx=model.n_ctx)


def make_job(state: ServerState, fields: dict, prompt: list[int], logprobs: int | None, param: str,
             end_of_turn: str | None = None) -> Job:
    """A job for the engine; `end_of_turn` (chat only: the template's markup) stops it besides `stop`."""
    model = state.model
    check_prompt_fits(prompt, model, param)
    room = model.n_ctx - len(prompt)
    max_tokens = fields["max_completion_tokens"] or fields["max_tokens"] or room
    constraint = None
    if response_format(fields["response_format"]):
        constraint = JsonConstraint(model.tokenizer.token_bytes, model.tokenizer.eog_ids)
    generation = Generation(model.tokenizer, prompt, max_tokens, sampling_params(fields, model), model.n_ctx,
                            stop=stop_strings(fields["stop"]) + ([end_of_turn] if end_of_turn else []),
                            logprobs=logprobs, constraint=constraint)
    return Job(prompt=prompt, generation=generation, loop=asyncio.get_running_loop())


def chat_prompt(messages: list[dict], model: Model) -> list[int]:
    clean = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant", param="messages")
        if isinstance(content, list):  # content parts: only text
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
                texts.append(part["text"])
            content = "\n".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    if not clean:
        raise ApiError(400, "messages must not be empty", param="messages")
    try:
        return model.chat_tokens(clean)
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages") from None


def completion_prompt(prompt: str | list, model: Model) -> list[int]:
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise ApiError(400, "prompt must be a string, a list with one string, or a list of token ids",
                               param="prompt")
            if min(prompt) < 0 or max(prompt) >= model.n_vocab:
                raise ApiError(400, f"prompt token ids must be in [0, {model.n_vocab})", param="prompt")
            return list(prompt)
    tokens = model.tokenize(prompt)
    if not tokens:
        raise ApiError(400, "the prompt is empty", param="prompt")
    return tokens


async def run_job(state: ServerState, job: Job) -> None:
    try:
        state.engine.submit(job)
    except Overloaded as exc:
        raise ApiError(503, str(exc), code="overloaded") from None


async def events(job: Job, request: Request, state: ServerState) -> AsyncIterator[tuple[str, object]]:
    """The job's events; cancels the job if the client goes away (or the consumer stops listening)."""
    finished = False
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if kind in ("done", "error", "embeddings"):
                finished = True
            yield kind, value
            if finished:
                return
    finally:
        if not finished:
            state.engine.cancel(job)


def engine_error(exc: object) -> ApiError:
    """A job's error as an API error, by type: what the request asked for (a prompt over the context, a
    parameter the sampler refused) is the client's 400; anything else is ours, a 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (ContextOverflowError, ValueError)):
        return ApiError(400, str(exc))
    return ApiError(500, f"generation failed: {exc}")


async def collect_steps(job: Job, request: Request, state: ServerState) -> list[Step]:
    """Every step of a job (a non-streaming response)."""
    steps = []
    async for kind, value in events(job, request, state):
        if kind == "error":
            raise engine_error(value)
        if kind == "step":
            steps.append(value)
    return steps


def sse_response(job: Job, request: Request, state: ServerState, fields: dict, base: dict, opening: list[dict],
                 chunk: Callable[[Step], dict | None], last: Callable[[str | None], dict]) -> StreamingResponse:
    """A job as server-sent events: the opening choices, one chunk per step with something to say, the last
    choice (finish_reason, timings), the usage chunk if asked for, then [DONE]; an error ends the stream."""
    include_usage = bool((fields["stream_options"] or {}).get("include_usage"))

    async def stream() -> AsyncIterator[bytes]:
        for choice in opening:
            yield sse({**base, "choices": [choice]})
        finish = None
        async for kind, value in events(job, request, state):
            if kind == "error":
                yield sse(engine_error(value).body())
                return
            if kind == "done":
                yield sse({**base, "timings": value.as_dict(), "choices": [last(finish)]})
                if include_usage:
                    yield sse({**base, "choices": [], "usage": usage(job)})
                yield b"data: [DONE]\n\n"
                return
            finish = value.finish_reason
            choice = chunk(value)
            if choice is not None:
                yield sse({**base, "choices": [choice]})

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# --- response shapes --------------------------------------------------------------------------------------

def token_text(model: Model, token: int) -> str:
    return model.tokenizer.token_bytes(token).decode("utf-8", errors="replace")


def chat_logprob(model: Model, step: Step) -> dict:
    def entry(token: int, logprob: float) -> dict:
        data = model.tokenizer.token_bytes(token)
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    return {**entry(step.token, step.logprob),
            "top_logprobs": [entry(t, lp) for t, lp in step.top_logprobs or []]}


def usage(job: Job) -> dict:
    prompt = len(job.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": job.timings.predicted_n,
            "total_tokens": prompt + job.timings.predicted_n,
            "prompt_tokens_details": {"cached_tokens": job.timings.cache_n}}


def sse(data: object) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


# --- endpoints --------------------------------------------------------------------------------------------

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


@endpoint
async def models(request: Request) -> Response:
    """The one model this server runs."""
    state = ready_state(request)
    model = state.model
    meta = {"n_vocab": model.n_vocab, "n_ctx": model.n_ctx, "n_ctx_train": model.config.n_ctx_train,
            "n_embd": model.n_embd, "size": model.file_bytes, "architecture": model.config.arch}
    return JSONResponse({"object": "list", "data": [
        {"id": state.model_alias, "object": "model", "created": int(state.started), "owned_by": "llamapyz",
         "meta": meta}]})


async def health(request: Request) -> Response:
    """200 {"status": "ok"} once the model is loaded; 503 while loading (or if loading failed)."""
    state: ServerState = request.app.state.llamapyz
    if state.engine is not None:
        return JSONResponse({"status": "ok"})
    if state.load_error:
        return JSONResponse({"status": "error", "error": {"message": state.load_error, "code": 503}}, 503)
    return JSONResponse({"status": "loading model", "error": {"message": "Loading model", "type": "unavailable_error",
                                                              "code": 503}}, 503)


@endpoint
async def tokenize(request: Request) -> Response:
    """Text to token ids (llama.cpp's /tokenize)."""
    state = ready_state(request)
    fields = schema.validate(await read_json(request), schema.TOKENIZE)
    tokens = await run_in_threadpool(state.model.tokenize, fields["content"], add_special=fields["add_special"])
    if fields["with_pieces"]:
        return JSONResponse({"tokens": [{"id": t, "piece": token_text(state.model, t)} for t in tokens]})
    return JSONResponse({"tokens": tokens})


@endpoint
async def detokenize(request: Request) -> Response:
    """Token ids to text (llama.cpp's /detokenize)."""
    state = ready_state(request)
    fields = schema.validate(await read_json(request), schema.DETOKENIZE)
    tokens = fields["tokens"]
    if tokens and (min(tokens) < 0 or max(tokens) >= state.model.n_vocab):
        raise ApiError(400, f"token ids must be in [0, {state.model.n_vocab})", param="tokens")
    return JSONResponse({"content": await run_in_threadpool(state.model.detokenize, tokens)})


@endpoint
async def props(request: Request) -> Response:
    """Model metadata and server settings (llama.cpp's /props)."""
    state = ready_state(request)
    model, engine = state.model, state.engine
    metadata = {k: v for k, v in model.gguf.metadata.items()
                if k.startswith("general.") and isinstance(v, (str, int, float, bool))}
    return JSONResponse({
        "model_alias": state.model_alias, "model_path": str(model.gguf.path), "build_info": f"llamapyz {__version__}",
        "n_ctx": model.n_ctx, "total_slots": len(engine.slots), "n_vocab": model.n_vocab, "n_embd": model.n_embd,
        "n_layer": model.config.n_layer, "architecture": model.config.arch, "file_bytes": model.file_bytes,
        "n_threads": model.n_threads, "cpu_tier": cpu.active().name, "eog_ids": sorted(model.tokenizer.eog_ids),
        "chat_template": model.chat_template.source,
        "chat_template_origin": model.chat_template.origin, "metadata": metadata,
        "default_generation_settings": {**{f.name: f.default for f in schema.SAMPLING if f.default is not None},
                                        **state.sampling_defaults},
    })


@endpoint
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    state = ready_state(request)
    engine = state.engine
    stats, busy = engine.stats, engine.busy_s

    def rate(n: int, seconds: float) -> float:
        return n / seconds if seconds > 0 else 0.0

    rows = [
        ("prompt_tokens_total", "counter", "Prompt tokens evaluated.", stats["prompt_tokens"]),
        ("tokens_predicted_total", "counter", "Tokens generated.", stats["generated_tokens"]),
        ("prompt_seconds_total", "counter", "Time spent evaluating prompts.", round(busy["prompt"], 6)),
        ("tokens_predicted_seconds_total", "counter", "Time spent in decode steps.", round(busy["decode"], 6)),
        ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
         rate(stats["prompt_tokens"], busy["prompt"])),
        ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s (all slots together).",
         rate(stats["decode_rows"], busy["decode"])),
        ("requests_processing", "gauge", "Requests in a slot.", engine.n_running),
        ("requests_deferred", "gauge", "Requests waiting for a slot.", engine.n_waiting),
        ("requests_total", "counter", "Requests completed.", stats["requests"]),
        ("requests_cancelled_total", "counter", "Requests cancelled (client went away).", stats["requests_cancelled"]),
        ("n_decode_total", "counter", "Batched decode steps.", stats["decode_steps"]),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP llamapyz:{name} {help_text}", f"# TYPE llamapyz:{name} {kind}", f"llamapyz:{name} {value}"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def openapi(request: Request) -> Response:
    """This API, described."""
    return JSONResponse(openapi_document())


async def static(request: Request) -> Response:
    state: ServerState = request.app.state.llamapyz
    path = request.path_params.get("path") or "index.html"
    if "/" + path in API_PATHS:  # a GET on a POST endpoint
        return error_response(ApiError(405, f"GET is not allowed on /{path}", type="invalid_request_error"))
    if path not in state.webui:
        if not state.webui and path == "index.html":
            return Response("llamapyz: the web UI is not available; the API is at /v1", media_type="text/plain")
        return JSONResponse(ApiError(404, f"not found: /{path}").body(), 404)
    content, media = state.webui[path]
    return Response(content, media_type=media, headers={"Cache-Control": "no-cache"})


# --- the app ---------------------------------------------------------------------------------------------

ROUTES = [
    ("/v1/chat/completions", "POST", chat_completions, schema.CHAT),
    ("/v1/completions", "POST", completions, schema.COMPLETION),
    ("/v1/embeddings", "POST", embeddings, schema.EMBEDDING),
    ("/v1/models", "GET", models, None),
    ("/health", "GET", health, None),
    ("/tokenize", "POST", tokenize, schema.TOKENIZE),
    ("/detokenize", "POST", detokenize, schema.DETOKENIZE),
    ("/props", "GET", props, None),
    ("/metrics", "GET", metrics, None),
    ("/openapi.json", "GET", openapi, None),
]
ALIASES = {"/chat/completions": "/v1/chat/completions", "/completions": "/v1/completions",
           "/embeddings": "/v1/embeddings", "/models": "/v1/models", "/v1/health": "/health"}
API_PATHS = frozenset([route[0] for route in ROUTES] + list(ALIASES))
OPEN_PATHS = ("/health", "/v1/health", "/openapi.json")  # reachable without the API key


def openapi_document() -> dict:
    paths: dict = {}
    for path, method, handler, fields in ROUTES:
        operation = {"summary": (handler.__doc__ or "").strip().splitlines()[0],
                     "responses": {"200": {"description": "OK"},
                                   "400": {"description": "Invalid request (OpenAI error object)"},
                                   "401": {"description": "Missing or wrong API key (when --api-key is set)"},
                                   "503": {"description": "Loading, or overloaded"}}}
        if fields is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": schema.schema_of(fields)}}}
        if path not in OPEN_PATHS:
            operation["security"] = [{"bearer": []}]
        paths[path] = {method.lower(): operation}
    return {"openapi": "3.1.0", "info": {"title": "llamapyz", "version": __version__},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": paths}


class ApiKeyMiddleware:
    """With --api-key, every API path needs `Authorization: Bearer KEY` (or `X-Api-Key: KEY`); /health,
    /openapi.json and the web UI's static files stay open."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.state.api_key or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("authorization", "")
        given = given[7:] if given[:7].lower() == "bearer " else headers.get("x-api-key", "")  # as sent: no strip
        # constant time: the comparison must not tell how much of a guess was right
        if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.state.api_key.encode()):
            await self.app(scope, receive, send)
            return
        message = "invalid API key" if given else "an API key is required (Authorization: Bearer KEY)"
        response = error_response(ApiError(401, message, code="invalid_api_key"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="llamapyz"'
        await response(scope, receive, send)

    def _protected(self, path: str) -> bool:
        path = ALIASES.get(path, path)
        return any(path == route[0] for route in ROUTES) and path not in OPEN_PATHS


def create_app(state: ServerState) -> Starlette:
    routes = [Route(path, handler, methods=[method]) for path, method, handler, _ in ROUTES]
    by_path = {path: (method, handler) for path, method, handler, _ in ROUTES}
    routes += [Route(alias, by_path[target][1], methods=[by_path[target][0]]) for alias, target in ALIASES.items()]
    routes += [Route("/", static, methods=["GET"]), Route("/{path:path}", static, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    app.state.llamapyz = state
    app.add_middleware(ApiKeyMiddleware, state=state)
    return app


async def not_found(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(404, f"not found: {request.url.path}"))


async def not_allowed(request: Request, exc: Exception) -> Response:
    response = error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                                       type="invalid_request_error"))
    allow = (getattr(exc, "headers", None) or {}).get("Allow")  # Starlette's 405 names the route's methods
    if allow:
        response.headers["Allow"] = allow
    return response

