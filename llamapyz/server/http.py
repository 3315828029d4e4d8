"""HTTP plumbing every endpoint uses: reading a JSON body within limits, OpenAI-shaped errors, a job's
events (cancelled when the client goes away), and server-sent events.

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

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..decode.generation import Step
from ..errors import ContextOverflowError, NonFiniteError
from .engine import Job, Overloaded
from .jobs import usage
from .pool import ServedModel
from .schema import ApiError
from .state import ServerState

log = logging.getLogger("llamapyz.server")

DISCONNECT_POLL_S = 0.25


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


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
                       code="unsupported_media_type", type="invalid_request_error")


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, within `limit` bytes (else a 413), as it is declared or as it comes (chunked)."""
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large",
                       type="invalid_request_error")
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


async def run_job(served: ServedModel, job: Job) -> None:
    try:
        served.engine.submit(job)
    except Overloaded as exc:
        raise ApiError(503, str(exc), code="overloaded") from None


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
    parameter the sampler refused) is the client's 400; anything else is ours, a 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (ContextOverflowError, ValueError)):
        return ApiError(400, str(exc))
    if isinstance(exc, NonFiniteError):  # the model's file is corrupt: ours, said plainly (tests/test_corrupt_weights)
        return ApiError(500, f"{exc} ({exc.hint})", code="non_finite_output")
    return ApiError(500, f"generation failed: {exc}")


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
    """A job as server-sent events: the opening choices, one chunk per step with something to say, the last
    choice (finish_reason, timings), the usage chunk if asked for, then [DONE]; an error ends the stream."""
    include_usage = bool((fields["stream_options"] or {}).get("include_usage"))

    async def stream() -> AsyncIterator[bytes]:
        for choice in opening:
            yield sse({**base, "choices": [choice]})
        finish = None
        async for kind, value in events(job, request, served):
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


def sse(data: object) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
