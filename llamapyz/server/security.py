"""The server's guards, as ASGI middleware around the routes (outermost first, as `create_app` stacks them):

- `HostGuardMiddleware`: only the Host names a server should be reached by (against DNS rebinding: a web page
  whose own name turns into 127.0.0.1 would otherwise be same-origin with the local server);
- CORS (Starlette's `CORSMiddleware`, only with --cors-origin): which other web pages may call the API;
- `BodyDeadlineMiddleware`: a request's body arrives within --body-timeout-s or the answer is a 408;
- `ApiKeyMiddleware`: with --api-key, the API's paths need the key.

Each answers a refusal in OpenAI's error shape (Anthropic's on its paths: `http.error_body`), never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .http import BodyTimeout, error_response
from .schema import ApiError
from .state import ServerState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # what a browser on this machine calls a loopback server
ANY_ADDRESS = ("", "0.0.0.0", "::")


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (`name` in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


# --- Host -----------------------------------------------------------------------------------------------

def is_loopback(address: str) -> bool:
    """Whether a bind address (a name or an IP literal, IPv6 with or without brackets) is this machine only."""
    if host_name(address) == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a Host header or option: lower case, without its port, brackets or a final dot
    ("[::1]:8080" -> "::1", "LocalHost.:80" -> "localhost")."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        value = value[1:end] if end > 0 else value
    elif value.count(":") == 1:  # name:port (a bare IPv6 address has more colons, and no port)
        value = value.split(":")[0]
    return value.rstrip(".")


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> tuple[str, ...] | None:
    """The Host names a server bound to `bind_host` answers, or None for any (the check off).

    Bound to a loopback address: the loopback names, plus `extra`. Bound elsewhere (0.0.0.0, a LAN address):
    any Host unless `extra` names some, then those, the loopback names and the bound address. "*" in `extra`
    turns the check off; "*.example.com" allows every name under example.com."""
    extra = [host_name(name) for name in extra]
    if "*" in extra or not (extra or is_loopback(bind_host)):
        return None
    names = {*LOOPBACK_NAMES, *extra}
    if host_name(bind_host) not in ANY_ADDRESS:
        names.add(host_name(bind_host))
    return tuple(sorted(names))


def host_allowed(name: str, allowed: Iterable[str]) -> bool:
    return any(name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])) for pattern in allowed)


class HostGuardMiddleware:
    """Answers 403 to a request whose Host header names none of `allowed` (see `allowed_hosts`)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"host") or ""
        name = host_name(given)
        if name and host_allowed(name, self.allowed):
            await self.app(scope, receive, send)
            return
        shown = ", ".join("[::1]" if n == "::1" else n for n in self.allowed)
        message = (f"the Host header {given!r} is not one this server answers ({shown}; a guard against DNS "
                   "rebinding)")
        if name:
            message += f": to allow it, start the server with --allowed-host {name}"
        response = error_response(ApiError(403, message, code="host_not_allowed"), scope["path"])
        await response(scope, receive, send)


# --- the request body's deadline -----------------------------------------------------------------------

class BodyDeadlineMiddleware:
    """A request's whole body must arrive within `timeout_s` of its headers. Past that, reading it raises
    `http.BodyTimeout` (a 408, raised from `receive`: a handler reading the body answers it like any other
    ApiError); and whenever a response starts before the body has all arrived (a 408, a 413, a
    401 that never read it), it says `Connection: close`, so the server drops the connection rather than keep
    reading what a slow or stalled client still sends."""

    def __init__(self, app: ASGIApp, timeout_s: float | None) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        pending = has_body(scope)  # the body has not all arrived yet
        response_started = False

        async def receive_in_time() -> Message:
            nonlocal pending
            if not pending:
                return await receive()
            try:  # wait_for, not asyncio.timeout: Python 3.10 has no timeout
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                pending = False
            return message

        async def send_closing(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                if pending:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive_in_time, send_closing)
        except BodyTimeout as exc:  # from a handler that does not answer ApiErrors itself
            if response_started:
                raise
            await error_response(exc, scope["path"])(scope, receive, send_closing)


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (HTTP/1.1 frames one by Content-Length or Transfer-Encoding)."""
    length = header(scope, b"content-length")
    return header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() != "0")


# --- the API key ----------------------------------------------------------------------------------------

class ApiKeyMiddleware:
    """With --api-key, every path in `protected` needs `Authorization: Bearer KEY` (or `X-Api-Key: KEY`);
    the rest (/health, /openapi.json, the web UI's static files) stays open. `protected` takes a path as
    requested (aliases included)."""

    def __init__(self, app: ASGIApp, state: ServerState, protected: Callable[[str], bool]) -> None:
        self.app = app
        self.state = state
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.state.api_key or not self.protected(scope["path"]):
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
        response = error_response(ApiError(401, message, code="invalid_api_key"), scope["path"])
        response.headers["WWW-Authenticate"] = 'Bearer realm="llamapyz"'
        await response(scope, receive, send)
