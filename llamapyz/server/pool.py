"""The models a server runs, by name. Each `ServedModel` is a `ModelSpec` and, once loaded, its engine (its own
slots and prompt cache). Models load when a request that needs one first names them (a completion, embeddings,
tokenizing; never the routes that only describe, `info`), or all at start (`--preload`), at most
`models_max` at once: loading one more first unloads the least recently used idle one. A request for a model
that is loading waits for it, up to `load_timeout_s`.

Fairness, when `models_max` are loaded and none is idle (a steady stream of requests keeps them busy): a
request for another model waits, and once the oldest such request has waited `switch_s` (--model-switch-s,
default 5 s), the pool *drains* the least recently used loaded model that has been loaded for `switch_s` at
least: new requests for it wait (they do not enter its engine), the ones it runs finish, then it is unloaded
and the waiting model loads (the one whose request has waited longest first). Requests for the drained model
then wait their turn the same way. So a request's model starts to take a loaded one's place within
`switch_s` of its arrival (or of that model's own load, if later) plus what the drained model was still
running; then it loads; and models switch at most once per `switch_s` however busy both are. Everything
stays bounded by `load_timeout_s`, after which a waiting request gets a 503.

A request whose client goes away while it waits stops waiting (`use` polls `gone`), and stops counting: a
switch that nobody waits for any more is dropped (its drained model takes requests again), and a client
that left never starts a load or an unload (a load already under way finishes).

Loading runs on a thread of its own (a model takes seconds to map and warm up); requests wait on the event
loop, polling, so a waiting request holds no thread. Nothing here computes: the engines do.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LlamapyzError
from ..model.model import Model, release_heap, settle
from .config_file import ModelSpec
from .engine import Engine
from .schema import RETRY_FAILED_S, RETRY_LOADING_S, ApiError

log = logging.getLogger("llamapyz.server")

POLL_S = 0.05  # how often a waiting request looks again
DEFAULT_SWITCH_S = 5.0  # --model-switch-s: how long a request waits before its model takes a busy one's place


@dataclass(eq=False)
class Wait:
    """One request waiting for its model (by identity: two may start at the same time)."""

    since: float  # time.monotonic() of its arrival


@dataclass(eq=False)
class ServedModel:
    spec: ModelSpec
    engine: Engine | None = None  # None: not loaded
    loading: bool = False
    load_error: str | None = None  # why it could not be loaded (kept: a broken file stays broken)
    load_hint: str | None = None
    last_used: float = 0.0  # time.monotonic() of its last request
    loaded_at: float = 0.0  # time.monotonic() of its last load
    pending: int = 0  # requests between finding it and handing their job to its engine
    draining: bool = False  # making room for a waiting model: takes no new request, unloaded once idle
    waits: set[Wait] = field(default_factory=set)  # the requests waiting for it

    @property
    def waited_since(self) -> float:
        """When the request that has waited longest for it arrived."""
        return min(wait.since for wait in self.waits)

    @property
    def alias(self) -> str:
        return self.spec.alias

    @property
    def model(self) -> Model:
        return self.engine.model

    @property
    def state(self) -> str:
        """"loaded", "loading", "failed" or "not loaded" (/v1/models)."""
        if self.engine is not None:
            return "loaded"
        return "loading" if self.loading else "failed" if self.load_error else "not loaded"

    @property
    def idle(self) -> bool:
        """Loaded, and nothing running, queued or about to be handed over, nor (unless it is draining)
        requests waiting to enter it (a model just loaded for them is not idle): it may be unloaded."""
        return (self.engine is not None and not self.pending and (self.draining or not self.waits)
                and self.engine.n_running == 0 and self.engine.n_waiting == 0)

    def names(self) -> set[str]:
        """What a request's `model` may say for it: its alias, its file's name or stem, its path."""
        names = {self.alias}
        if not isinstance(self.spec.source, tuple):
            path = Path(self.spec.source)
            names |= {str(self.spec.source), path.name, path.stem}
        return names


class ModelPool:
    """The served models, in the order given (the first is the default); `load` turns a spec into a started
    engine (raising what went wrong)."""

    def __init__(self, specs: list[ModelSpec], load: Callable[[ModelSpec], Engine], models_max: int = 0,
                 load_timeout_s: float = 300.0, switch_s: float = DEFAULT_SWITCH_S) -> None:
        self.models = [ServedModel(spec) for spec in specs]
        self.default = self.models[0]
        self.load_engine = load
        self.models_max = models_max  # 0: no limit
        self.load_timeout_s = load_timeout_s
        self.switch_s = switch_s
        self.lock = threading.Lock()  # guards every ServedModel's engine/loading/pending/draining/waits
        self.started = False  # the models to load at start are loaded (/health)

    # --- finding a model ---------------------------------------------------------------------------------

    def find(self, name: object) -> ServedModel:
        """The model a request's `model` names. With one model, any name (or none) is that model, as OpenAI
        clients send whatever name they were configured with; with several, no name is the default and an
        unknown one is a 404 listing the names there are."""
        if len(self.models) == 1 or name is None or name == "":
            return self.default
        if not isinstance(name, str):
            raise ApiError(400, "\"model\" must be a string", param="model")
        for served in self.models:
            if served.alias == name:
                return served
        for served in self.models:
            if name in served.names():
                return served
        available = ", ".join(served.alias for served in self.models)
        raise ApiError(404, f"the model \"{name}\" does not exist; this server has: {available}",
                       param="model", code="model_not_found")

    @asynccontextmanager
    async def use(self, name: object, gone: Callable[[], Awaitable[bool]] | None = None
                  ) -> AsyncIterator[ServedModel]:
        """The model `name` names, loaded (waiting for it up to load_timeout_s), kept from being unloaded
        until the block ends (by then the request's job is in its engine, which keeps it busy). `gone`
        (the request's `is_disconnected`) is asked at each poll: a client that left stops the wait."""
        served = self.find(name)
        await self._wait_for(served, gone)
        try:
            yield served
        finally:
            with self.lock:
                served.pending -= 1

    async def _wait_for(self, served: ServedModel, gone: Callable[[], Awaitable[bool]] | None) -> None:
        """Return once `served` is loaded and takes requests, counted in its `pending`."""
        wait = Wait(time.monotonic())
        deadline = wait.since + self.load_timeout_s
        try:
            while True:
                with self.lock:
                    if served.engine is not None and not served.draining:
                        served.pending += 1
                        served.last_used = time.monotonic()
                        return
                    if served.load_error:
                        raise ApiError(503, f"the model \"{served.alias}\" could not be loaded: {served.load_error}",
                                       code="load_failed", retry_after_s=RETRY_FAILED_S)
                    served.waits.add(wait)
                    self._arrange()
                if time.monotonic() > deadline:
                    raise ApiError(503, f"the model \"{served.alias}\" is still loading (or waiting for another to "
                                        f"make room) after {self.load_timeout_s:g} s; try again later", code="loading",
                                   retry_after_s=RETRY_LOADING_S)
                await asyncio.sleep(POLL_S)
                if gone is not None and await gone():  # before its next `_arrange`: a client that left moves nothing
                    raise ApiError(400, "the client went away while its model was being loaded")
        finally:
            with self.lock:
                if wait in served.waits:
                    served.waits.discard(wait)
                    self._arrange()  # a switch nobody waits for any more is dropped

    # --- loading and unloading ---------------------------------------------------------------------------

    def _arrange(self) -> None:
        """Called with the lock held, at each poll of a waiting request and when a wait ends: load the models
        requests wait for while there is room (unloading an idle model, a drained one first); for those left
        waiting `switch_s`, drain loaded models (the module's docstring); drop drains nobody needs now."""
        now = time.monotonic()
        wanted = sorted((m for m in self.models if m.waits and m.engine is None and not m.loading
                         and not m.load_error), key=lambda m: m.waited_since)
        while wanted and self._make_room():
            self._start_loading(wanted.pop(0))
        draining = [m for m in self.models if m.draining]
        for served in draining[len(wanted):]:  # more drains than models that wait: a client left
            served.draining = False
            log.info("%s takes requests again: nothing waits for its place any more", served.alias)
        for served in wanted[len(draining):]:
            if now - served.waited_since < self.switch_s:
                break  # the others have waited less
            victims = [m for m in self.models if m.engine is not None and not m.draining
                       and now - m.loaded_at >= self.switch_s]
            if not victims:
                break
            victim = min(victims, key=lambda m: m.last_used)
            victim.draining = True
            log.info("%s: draining it, to make room for %s (waiting %.1f s)", victim.alias, served.alias,
                     now - served.waited_since)

    def _start_loading(self, served: ServedModel) -> None:
        """Load `served` on a thread (called with the lock held, once `_make_room` said there is room)."""
        served.loading = True
        threading.Thread(target=self.load, args=(served,), name=f"llamapyz-load-{served.alias}", daemon=True).start()

    def _make_room(self) -> bool:
        """Whether another model may load now, unloading an idle one if the pool is full: a drained one
        first, else the least recently used."""
        if not self.models_max:
            return True
        busy = [m for m in self.models if m.engine is not None or m.loading]
        if len(busy) < self.models_max:
            return True
        idle = [m for m in busy if m.idle]
        if not idle:
            return False  # every loaded model is working: wait for one to finish (or to be drained)
        self._unload(min(idle, key=lambda m: (not m.draining, m.last_used)))
        return True

    def load(self, served: ServedModel) -> None:
        """Load a model now, on this thread (start-up and --preload call it directly)."""
        with self.lock:
            served.loading = True
        try:
            engine = self.load_engine(served.spec)
        except Exception as exc:  # whatever it is, it is said (/health, /v1/models, the request), never hidden
            if not isinstance(exc, (LlamapyzError, OSError, ValueError)):
                log.exception("loading %s failed", served.alias)
            with self.lock:
                served.loading, served.load_error = False, str(exc)
                served.load_hint = getattr(exc, "hint", None)
            return
        with self.lock:
            served.engine, served.loading = engine, False
            served.last_used = served.loaded_at = time.monotonic()

    def _unload(self, served: ServedModel) -> None:
        """Stop its engine and let its weights, KV cache and mapping go (called with the lock held)."""
        engine, served.engine, served.draining = served.engine, None, False
        engine.stop()
        engine.model.gguf.close()
        del engine
        # what loading made was frozen out of the collector's sight (model.settle): let it see again, so that
        # the model's cycles go (its arrays hold the mapping, unmapped once they are collected), then freeze
        # what is left; and give the freed heap back to the system
        gc.unfreeze()
        settle()
        release_heap()
        log.info("unloaded %s", served.alias)

    def stop(self) -> None:
        """Stop every engine (the server is ending)."""
        with self.lock:
            for served in self.models:
                if served.engine is not None:
                    served.engine.stop()
