"""The HTTP side: a Starlette app speaking OpenAI's API (plus llama.cpp's extras, and Anthropic's Messages API)
in front of the engine.

This module puts the routes together (the handlers live one concern per module: `completions`, `responses`,
`messages`, `embeddings`, `info`), describes them in /openapi.json and puts the guards of `security` around
them (the Host check, CORS, the body's deadline, the API key). Every handler validates its request, turns it
into an engine `Job` (`jobs`; a chat's through `chat_job`), and relays the job's events as one JSON response
or as server-sent events (`http`). Errors take one path: handlers raise `ApiError`, and the exception handlers
registered here (`http.api_error`, `http.internal_error`, and the router's own 404 and 405) answer every
refusal and every bug in OpenAI's shape (Anthropic's on its paths). Nothing here touches the model's weights:
tokenizing and chat templates run in the thread pool, forward passes only on the engine thread.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..version import __version__
from . import schema
from .completions import chat_completions, completions
from .embeddings import embeddings
from .http import api_error, error_response, internal_error
from .info import detokenize, health, metrics, models, props, tokenize
from .messages import count_tokens, messages
from .responses import responses
from .schema import ApiError
from .security import ApiKeyMiddleware, BodyDeadlineMiddleware, HostGuardMiddleware
from .state import ServerState, load_webui

__all__ = ["ServerState", "create_app", "load_webui"]


async def openapi(request: Request) -> Response:
    """This API, described."""
    return JSONResponse(openapi_document())


async def static(request: Request) -> Response:
    state: ServerState = request.app.state.llamapyz
    path = request.path_params.get("path") or "index.html"
    if "/" + path in API_PATHS:  # a GET on a POST endpoint
        raise ApiError(405, f"GET is not allowed on /{path}")
    if path not in state.webui:
        if not state.webui and path == "index.html":
            return Response("llamapyz: the web UI is not available; the API is at /v1", media_type="text/plain")
        raise ApiError(404, f"not found: /{path}")
    content, media = state.webui[path]
    return Response(content, media_type=media, headers={"Cache-Control": "no-cache"})


# --- the app ---------------------------------------------------------------------------------------------

ROUTES = [
    ("/v1/chat/completions", "POST", chat_completions, schema.CHAT),
    ("/v1/completions", "POST", completions, schema.COMPLETION),
    ("/v1/responses", "POST", responses, schema.RESPONSES),
    ("/v1/messages", "POST", messages, schema.MESSAGES_API),
    ("/v1/messages/count_tokens", "POST", count_tokens, schema.COUNT_TOKENS),
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
           "/embeddings": "/v1/embeddings", "/models": "/v1/models", "/v1/health": "/health",
           "/responses": "/v1/responses"}
API_PATHS = frozenset([route[0] for route in ROUTES] + list(ALIASES))
OPEN_PATHS = ("/health", "/v1/health", "/openapi.json")  # reachable without the API key


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}


def openapi_document() -> dict:
    paths: dict = {}
    for path, method, handler, fields in ROUTES:
        operation = {"summary": (handler.__doc__ or "").strip().splitlines()[0],
                     "responses": {"200": {"description": "OK"},
                                   "400": {"description": "Invalid request (OpenAI error object)"},
                                   "401": {"description": "Missing or wrong API key (when --api-key is set)"},
                                   "503": {"description": "Loading, or overloaded", "headers": RETRY_AFTER}}}
        if fields is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": schema.schema_of(fields)}}}
            operation["responses"]["415"] = {"description": "The body is not sent as application/json"}
        if path not in OPEN_PATHS:
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
        paths[path] = {method.lower(): operation}
    return {"openapi": "3.1.0", "info": {"title": "llamapyz", "version": __version__},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                               "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}},
            "paths": paths}


class App(Starlette):
    """Starlette, less a second report of each bug. Starlette's outermost middleware, once `internal_error`
    has answered (and logged) an exception no other handler took, raises it again "so that servers can log
    it": uvicorn would log a second traceback, and a replica's task or a test client would raise it. Every
    exception of a request that gets here has been through `internal_error`, so it ends here. (Were the
    response already under way, the server closes the connection, as it does after any unfinished response.)"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Exception:
            if scope["type"] != "http":
                raise


def create_app(state: ServerState) -> App:
    routes = [Route(path, handler, methods=[method]) for path, method, handler, _ in ROUTES]
    by_path = {path: (method, handler) for path, method, handler, _ in ROUTES}
    routes += [Route(alias, by_path[target][1], methods=[by_path[target][0]]) for alias, target in ALIASES.items()]
    routes += [Route("/", static, methods=["GET"]), Route("/{path:path}", static, methods=["GET"])]
    app = App(routes=routes, exception_handlers={ApiError: api_error, Exception: internal_error, 404: not_found,
                                                 405: not_allowed})
    app.state.llamapyz = state
    # added innermost first: a request meets the Host check, CORS, the body's deadline, then the API key
    app.add_middleware(ApiKeyMiddleware, state=state, protected=protected)
    app.add_middleware(BodyDeadlineMiddleware, timeout_s=state.body_timeout_s)
    if state.cors_origins:  # preflights are answered here, before the API key is asked for
        app.add_middleware(CORSMiddleware, allow_origins=list(state.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Api-Key"], max_age=600)
    if state.allowed_hosts is not None:
        app.add_middleware(HostGuardMiddleware, allowed=state.allowed_hosts)
    return app


def protected(path: str) -> bool:
    """Whether a path needs the API key (when there is one): the API's, less OPEN_PATHS."""
    path = ALIASES.get(path, path)
    return path in API_PATHS and path not in OPEN_PATHS


async def not_found(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(404, f"not found: {request.url.path}"), request.url.path)


async def not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 for a method the path does not take; but a path the server has nothing at is a 404 whatever the
    method (the web UI's catch-all route takes GET only, so Starlette would call a POST to any path a 405)."""
    state: ServerState = request.app.state.llamapyz
    path = request.url.path
    if path not in API_PATHS and path != "/" and path.lstrip("/") not in state.webui:
        return await not_found(request, exc)
    response = error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}"),
                              request.url.path)
    allow = (getattr(exc, "headers", None) or {}).get("Allow")  # Starlette's 405 names the route's methods
    if allow:
        response.headers["Allow"] = allow
    return response
