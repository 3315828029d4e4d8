"""Connection limits, kept before any request reaches the app: what uvicorn's h11 protocol leaves open.

`ConnectionLimits.protocol()` is the class uvicorn runs per connection (`uvicorn.Config(http=...)`): uvicorn's
`H11Protocol` plus three guarantees, however a client sends its bytes (all in one read, or a byte at a time):

- **The head's deadline.** A request's head (request line and headers) is complete within `header_timeout_s`
  of the connection opening, or of the previous response's end on a kept-alive connection; past it the
  connection is closed, with a 408 if some of the head had arrived. (uvicorn arms its keep-alive timer only
  after a response and drops it at the first byte; the body's own deadline, `security.BodyDeadlineMiddleware`,
  starts once the head is in.) A request being answered has no such deadline.
- **The head's size.** A head of more than `max_head_bytes` (uvicorn's `h11_max_incomplete_event_size`) is a
  431 and a closed connection. h11 checks that limit only while a head is unfinished, so a bigger head that
  arrived in one read went through.
- **A cap on connections.** At most `max_connections` are open at once; one more is answered 503 (with
  Retry-After) and closed at once, and a warning says how many were turned away (one line at most every
  LOG_EVERY_S). The default cap (`connection_cap`) stays below the process's file-descriptor limit, so the
  listening socket can always accept, answer and close: a flood of sockets is turned away instead of
  exhausting the descriptors (then asyncio stops accepting anyone, /health included), and once stalled
  sockets reach the head's deadline, everyone is answered again.

Why not uvicorn's own `limit_concurrency` (0.55): it is checked only once a request's head has arrived
(`H11Protocol.handle_events`), against the open connections plus the running requests; it neither refuses
a connection nor closes an idle or stalled one. Sockets that never send a head pass it untouched and use up
the descriptors, and while they are open every real request gets its 503.

Every refusal here is written straight to the socket (the connection closes after it, so h11's state needs no
keeping), its body in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from .schema import RETRY_SOON_S, ApiError

try:
    import resource
except ImportError:  # Windows: no descriptor limit to read
    resource = None  # type: ignore[assignment]

log = logging.getLogger("llamapyz.server")

HEADER_TIMEOUT_S = 10.0  # a request's head must be complete within this
FD_RESERVE = 128  # descriptors kept for all but connections: the model files, numba's cache, threads, logs
MAX_CONNECTIONS = 1024  # the default cap where the descriptor limit allows more: plenty for --queue-size 64
LOG_EVERY_S = 10.0  # at most one "turned away" line per this
END_OF_HEAD = re.compile(rb"\n\r?\n")  # h11's own end of a head (a blank line, CRLF or LF)


def raw_response(error: ApiError) -> bytes:
    """A whole HTTP/1.1 response that ends the connection: `error` as OpenAI's JSON error object, with its
    status and headers (Retry-After on a 503)."""
    body = json.dumps(error.body()).encode()
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close",
             *(f"{k.lower()}: {v}" for k, v in error.headers().items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def head_too_large(buffered: bytes, max_head_bytes: int) -> bool:
    """Whether a head at the start of `buffered` is, or must become, longer than `max_head_bytes`: it does not
    end within that many bytes, and that many have arrived."""
    return len(buffered) >= max_head_bytes and END_OF_HEAD.search(buffered, 0, max_head_bytes) is None


class HeadLimitedConnection(h11.Connection):
    """h11's server side, its head limit kept however the head arrives (see the module's docstring)."""

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.error_status = 400  # the status of the last RemoteProtocolError (h11's hint)

    def next_event(self) -> Any:  # h11's union of events and sentinels
        try:
            if self.their_state is h11.IDLE and head_too_large(self.trailing_data[0], self.max_head_bytes):
                raise h11.RemoteProtocolError("the request head is too large", error_status_hint=431)
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status = exc.error_status_hint
            raise


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under `limits` (a subclass per server: see `ConnectionLimits.protocol`)."""

    limits: ConnectionLimits

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = HeadLimitedConnection(config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE)
        self.head_timer: asyncio.TimerHandle | None = None
        self.turned_away = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.limits.max_connections
        if cap is not None and len(self.connections) >= cap:
            self.turned_away = True
            self.transport = transport  # for uvicorn's connection_lost; never counted in `connections`
            transport.write(BUSY)
            transport.close()
            self.limits.turn_away(len(self.connections), self.loop)
            return
        super().connection_made(transport)
        self.watch_head()

    def data_received(self, data: bytes) -> None:
        if self.turned_away:
            return
        super().data_received(data)
        self.watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 could not read (or whose head is too large): one error, then the connection closes."""
        status = self.conn.error_status if self.conn.error_status in (400, 431) else 400
        if status == 431:
            message = f"the request line and headers are larger than {self.conn.max_head_bytes} bytes"
        else:
            message = "the request is not valid HTTP/1.1"
        self.transport.write(raw_response(ApiError(status, message)))
        self.transport.close()

    # --- the head's deadline ---

    def watch_head(self) -> None:
        """Start the head's deadline when the connection waits for a request's head, stop it once the head is
        in (h11's `their_state` is IDLE exactly while the client has a head to send)."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self.head_timer is None and self.limits.header_timeout_s is not None:
            self.head_timer = self.loop.call_later(self.limits.header_timeout_s, self.head_timed_out)
        elif not waiting:
            self.stop_head_timer()

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a head came: say why the connection ends
            timeout_s = self.limits.header_timeout_s
            error = ApiError(408, f"the request line and headers did not arrive within {timeout_s:g} s",
                             code="request_timeout")
            self.transport.write(raw_response(error))
        self.transport.close()


BUSY = raw_response(ApiError(503, "the server has as many connections open as it takes (--max-connections); try "
                              "again shortly", code="overloaded", retry_after_s=RETRY_SOON_S))


@dataclass
class ConnectionLimits:
    """One server's connection limits, and its count of connections turned away since its last log line."""

    header_timeout_s: float | None = HEADER_TIMEOUT_S
    max_connections: int | None = None
    pending: int = 0  # turned away and not yet logged
    logged_at: float = -math.inf
    flush: asyncio.TimerHandle | None = field(default=None, repr=False)

    def protocol(self) -> type[LimitedH11Protocol]:
        """The protocol class for `uvicorn.Config(http=...)`, bound to these limits."""
        return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": self})

    def turn_away(self, n_open: int, loop: asyncio.AbstractEventLoop) -> None:
        """Count one connection turned away; say so at once if nothing was said for LOG_EVERY_S, else in one
        line at the end of that period."""
        self.pending += 1
        if loop.time() - self.logged_at >= LOG_EVERY_S:
            self.report(n_open, loop)
        elif self.flush is None:
            self.flush = loop.call_at(self.logged_at + LOG_EVERY_S, self.report, n_open, loop)

    def report(self, n_open: int, loop: asyncio.AbstractEventLoop) -> None:
        self.flush = None
        if self.pending:
            log.warning("llamapyz: turned away %d connection(s): %d are open, the most --max-connections %d allows "
                        "(clients that connect and send nothing hold theirs for up to --header-timeout-s %g s)",
                        self.pending, n_open, self.max_connections, self.header_timeout_s or 0)
        self.pending, self.logged_at = 0, loop.time()


def connection_cap(requested: int | None, say=print) -> int | None:
    """The cap on open connections: `requested` (--max-connections), or by default MAX_CONNECTIONS or what the
    descriptor limit leaves after FD_RESERVE, whichever is less. The soft descriptor limit is raised first,
    up to the hard one, to fit the cap and the reserve. None where there is no limit to read (Windows) and
    none requested."""
    if resource is None:
        return requested
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = (requested or MAX_CONNECTIONS) + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):  # a limit the system will not raise: work within it
            pass
    room = math.inf if soft == resource.RLIM_INFINITY else max(soft // 2, soft - FD_RESERVE)
    if requested is None:
        return int(min(MAX_CONNECTIONS, room))
    if requested > room:
        say(f"warning: --max-connections {requested} leaves too few of the process's {soft} file descriptors "
            f"(ulimit -n) for the rest: past about {room:g} connections, new ones may fail to be accepted")
    return requested
