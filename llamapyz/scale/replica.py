"""One replica of a scaled-out server: the single-process server's state, app and engines (the same factory,
`server.create_state` and `server.app.create_app`), with requests handed to it as data instead of over a socket.

The front deployment reads each request and passes it here (`Request` and the body); `ReplicaServer.handle`
runs the Starlette app in this process, as uvicorn would, and yields the response as it is sent: first its
status and headers, then the body's pieces (each token's event, for a stream). Nothing here imports Ray, so
it is tested without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..server import ServeOptions, create_state, load_engine
from ..server.app import create_app
from ..server.state import ServerState

REPLICA_HEADER = "llamapyz-replica"  # which replica answered (clients may ignore it; the tests read it)


@dataclass(frozen=True)
class Request:
    """What the front forwards of an HTTP request (the body travels beside it)."""

    method: str
    path: str
    query_string: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    client: tuple[str, int] | None = None
    scheme: str = "http"
    server: tuple[str, int] | None = None

    def scope(self) -> dict:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                "method": self.method, "scheme": self.scheme, "path": self.path, "raw_path": self.path.encode(),
                "root_path": "", "query_string": self.query_string, "headers": list(self.headers),
                "client": self.client, "server": self.server}


class ReplicaUnhealthy(Exception):
    """The replica cannot serve: Ray replaces it."""


class ReplicaServer:
    """The server of one replica: its models loaded (the default one now), its app ready to be driven."""

    def __init__(self, options: ServeOptions, name: str = "replica", say=print) -> None:
        self.name = name
        self.state: ServerState = create_state(options, say)
        self.app = create_app(self.state)
        load_engine(options, self.state, say)
        if self.state.load_error:  # the replica never comes up; Ray says why and tries again
            raise ReplicaUnhealthy(f"the model could not be loaded: {self.state.load_error}")

    async def handle(self, request: Request, body: bytes) -> AsyncIterator[tuple]:
        """The app's answer to `request`: ("start", status, headers), then ("body", bytes) per piece. Closing
        the iterator early (the client went away) tells the app so, which cancels the request's job."""
        sent: asyncio.Queue = asyncio.Queue()
        gone = asyncio.Event()
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            await sent.put(message)

        async def run() -> None:
            try:
                await self.app(request.scope(), receive, send)
            finally:
                await sent.put(None)

        task = asyncio.create_task(run())
        try:
            while (message := await sent.get()) is not None:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.name.encode())]
                    yield ("start", message["status"], headers)
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield ("body", message["body"])
                    if not message.get("more_body"):
                        break
            await task
        finally:
            gone.set()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def check_health(self) -> None:
        """Raise `ReplicaUnhealthy` when an engine thread has died or /health does not answer 200."""
        for served in self.state.pool.models:
            engine = served.engine
            if engine is not None and not engine.thread.is_alive():
                raise ReplicaUnhealthy(f"the engine thread of {served.alias} has died")
        status = None
        async for item in self.handle(Request("GET", "/health", headers=((b"host", b"localhost"),)), b""):
            if item[0] == "start":
                status = item[1]
        if status != 200:
            raise ReplicaUnhealthy(f"/health answered {status}")

    def stats(self) -> dict[str, dict]:
        """Each loaded model's counters and gauges (for the front's aggregated /metrics)."""
        out = {}
        for served in self.state.pool.models:
            engine = served.engine
            if engine is not None:
                out[served.alias] = {"stats": dict(engine.stats), "busy_s": dict(engine.busy_s),
                                     "running": engine.n_running, "waiting": engine.n_waiting}
        return out
