"""HTTP plumbing every endpoint uses: reading a JSON body within limits, OpenAI-shaped errors, a job's
events (cancelled when the client goes away), and server-sent events.

Errors take one path. A handler (or anything it calls) raises `ApiError`; `create_app` registers `api_error`
and `internal_error` as Starlette's exception handlers, so an `ApiError` becomes its JSON error object (its
type from `schema.ERROR_TYPES`, Retry-After on a 503), and any other exception, a bug, becomes a short 500
(no internals) after one traceback in the log; the server goes on. Once a stream's status line is sent, an
error ends the stream with one event of the same shape (`sse_response`). The Ray front reads bodies with the
same `read_body` and answers its own refusals with the same `error_response`.

A body is read as JSON only when its Content-Type says JSON (`application/json`, or any `type/x+json`), else
the answer is a 415 (`require_json_media_type`). Why: a web page on any site may send a "simple" cross-site
request (a form's `application/x-www-form-urlencoded`, `multipart/form-data` or `text/plain`, or fetch with
no Content-Type) without a CORS preflight, and the browser delivers it even though the page cannot read the
answer; were such a body parsed as JSON, any page the user visits could make the local server generate, load
models or spend its slots. A JSON Content-Type is not one a page may send cross-site without a preflight,
which the server answers with no CORS headers unless --cors-origin allows the page."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse

from ..decode.generation import Step
from ..errors import ContextOverflowError, LlamapyzError, NonFiniteError
from .engine import Job, Overloaded, Timings
from .jobs import usage
from .pool import ServedModel
from .schema import RETRY_SOON_S, ApiError
from .state import ServerState

log = logging.getLogger("llamapyz.server")

DISCONNECT_POLL_S = 0.25


ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")  # answered in Anthropic's error shape


def error_body(exc: ApiError, path: str = "") -> dict:
    """The error's JSON object, in the shape the path's API has: Anthropic's on its paths, else OpenAI's."""
    return exc.anthropic_body() if path in ANTHROPIC_PATHS else exc.body()


def error_response(exc: ApiError, path: str = "") -> JSONResponse:
    """The error's JSON object (`error_body`: the shape of the API `path` belongs to), status and headers
    (Retry-After on a 503)."""
    return JSONResponse(error_body(exc, path), status_code=exc.status, headers=exc.headers())


def internal_server_error() -> ApiError:
    """What a client is told of a bug: that it happened and where to look, nothing of its internals."""
    return ApiError(500, "internal server error (see the server log)")


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    """Starlette's handler for `ApiError` (registered by `create_app`)."""
    return error_response(exc, request.url.path)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's handler for any other exception (a bug): one traceback in the log, naming the request, and
    a short 500. (Starlette raises the exception again after this answer; `app.App` ends it there, so the
    server logs no second traceback.)"""
    log.error("error while handling %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(internal_server_error(), request.url.path)


class BodyTimeout(ApiError):
    """The request's body did not arrive within `timeout_s`: a 408, from `read_body` (the Ray front) or from
    `receive` (the single server's `security.BodyDeadlineMiddleware`)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body did not arrive within {timeout_s:g} s", code="request_timeout")


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON: `application/json` or any `type/subtype+json`, in any case,
    with or without parameters (`; charset=utf-8`)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return bool(kind) and (media == "application/json" or (subtype.endswith("+json") and len(subtype) > 5))


def require_json_media_type(content_type: str | None) -> None:
    """A 415 unless the Content-Type names JSON (see the module's docstring for why)."""
    if not is_json_media_type(content_type):
        given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise ApiError(415, f"the request body must be JSON, sent with Content-Type: application/json (it came "
                            f"with {given[:100]}; curl: -H 'Content-Type: application/json')",
                       code="unsupported_media_type")


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request's body, within `limit` bytes (else a 413), as it is declared or as it comes (chunked), and
    within `timeout_s` when given (else a 408: the Ray front's deadline; the single server's runs from the
    head's arrival, in `security.BodyDeadlineMiddleware`)."""
    if timeout_s is None:
        return await _read_body(request, limit)
    try:  # wait_for, not asyncio.timeout: Python 3.10 has no timeout
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimeout(timeout_s) from None


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():  # a chunked body has no length to check up front
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer; not an error of ours to log
        raise ApiError(400, "the client went away before sending the whole body") from None
    return b"".join(chunks)


async def read_json(request: Request) -> object:
    """The request's JSON body: sent as JSON (else a 415, before any of it is read), within --max-body-mib
    (else a 413). Its deadline (--body-timeout-s) is kept by `security.BodyDeadlineMiddleware`: reading past
    it raises that 408 from here."""
    require_json_media_type(request.headers.get("content-type"))
    body = await read_body(request, request.app.state.llamapyz.max_body_bytes)
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


def server_state(request: Request) -> ServerState:
    return request.app.state.llamapyz


async def run_job(served: ServedModel, job: Job) -> None:
    try:
        served.engine.submit(job)
    except Overloaded as exc:
        raise ApiError(503, str(exc), code="overloaded", retry_after_s=RETRY_SOON_S) from None


async def events(job: Job, request: Request, served: ServedModel) -> AsyncIterator[tuple[str, object]]:
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
            served.engine.cancel(job)


def engine_error(exc: object) -> ApiError:
    """A job's error as an API error, by type: what the request asked for (a prompt over the context, a
    parameter the sampler refused) is the client's 400; anything else is ours, a 500: said plainly when it is
    one of ours (a constraint that failed, the server shutting down), in short when it is a bug (the engine
    has logged its traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (ContextOverflowError, ValueError)):
        return ApiError(400, str(exc))
    if isinstance(exc, NonFiniteError):  # the model's file is corrupt: ours, said plainly (tests/test_corrupt_weights)
        return ApiError(500, f"{exc} ({exc.hint})", code="non_finite_output")
    if isinstance(exc, LlamapyzError):
        return ApiError(500, f"generation failed: {exc}")
    return internal_server_error()


async def collect_steps(job: Job, request: Request, served: ServedModel) -> list[Step]:
    """Every step of a job (a non-streaming response)."""
    steps = []
    async for kind, value in events(job, request, served):
        if kind == "error":
            raise engine_error(value)
        if kind == "step":
            steps.append(value)
    return steps


def sse_response(job: Job, request: Request, served: ServedModel, fields: dict, base: dict, opening: list[dict],
                 chunk: Callable[[Step], dict | None], last: Callable[[str | None], dict]) -> StreamingResponse:
    """A chat or text completion as server-sent events: the opening choices, one chunk per step with something
    to say, the last choice (finish_reason, timings), the usage chunk if asked for, then [DONE]."""
    include_usage = bool((fields["stream_options"] or {}).get("include_usage"))
    finish = None

    def step(value: Step) -> list[bytes]:
        nonlocal finish
        finish = value.finish_reason
        choice = chunk(value)
        return [] if choice is None else [sse({**base, "choices": [choice]})]

    def done(timings: Timings) -> list[bytes]:
        events = [sse({**base, "timings": timings.as_dict(), "choices": [last(finish)]})]
        if include_usage:
            events.append(sse({**base, "choices": [], "usage": usage(job)}))
        return [*events, b"data: [DONE]\n\n"]

    return event_stream(job, request, served, [sse({**base, "choices": [choice]}) for choice in opening], step, done,
                        lambda error: sse(error.body()))


def event_stream(job: Job, request: Request, served: ServedModel, opening: list[bytes],
                 step: Callable[[Step], list[bytes]], done: Callable[[Timings], list[bytes]],
                 error: Callable[[ApiError], bytes]) -> StreamingResponse:
    """A job as server-sent events, each API's events made by its own callbacks: the `opening` events, then
    `step`'s for each step, `done`'s at the end. An error ends the stream with `error`'s event: the job's
    (`engine_error`), or a bug's here (logged once, told in short), as the status line is long sent."""

    async def stream() -> AsyncIterator[bytes]:
        try:
            for event in opening:
                yield event
            async with aclosing(events(job, request, served)) as job_events:  # however it ends, the job ends
                async for kind, value in job_events:
                    if kind == "error":
                        yield error(engine_error(value))
                        return
                    for event in done(value) if kind == "done" else step(value):
                        yield event
                    if kind == "done":
                        return
        except Exception as exc:  # a bug while streaming: the stream ends with an error event, not cut short
            log.error("error while streaming %s %s", request.method, request.url.path, exc_info=exc)
            yield error(internal_server_error())

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def sse(data: object, event: str | None = None) -> bytes:
    """One server-sent event (named, for the APIs whose events have names)."""
    named = f"event: {event}\n" if event else ""
    return f"{named}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
