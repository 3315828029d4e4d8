"""The models a server runs, by name. Each `ServedModel` is a `ModelSpec` and, once loaded, its engine (its own
slots and prompt cache). Models load when a request first names them (or all at start: `--preload`), at most
`models_max` at once: loading one more first unloads the least recently used idle one. A request for a model
that is loading waits for it, up to `load_timeout_s`.

Loading runs on a thread of its own (a model takes seconds to map and warm up); requests wait on the event
loop, polling, so a waiting request holds no thread. Nothing here computes: the engines do.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import LlamapyzError
from ..model.model import Model, release_heap, settle
from .config import ModelSpec
from .engine import Engine
from .schema import ApiError

log = logging.getLogger("llamapyz.server")

POLL_S = 0.05  # how often a waiting request looks again


@dataclass(eq=False)
class ServedModel:
    spec: ModelSpec
    engine: Engine | None = None  # None: not loaded
    loading: bool = False
    load_error: str | None = None  # why it could not be loaded (kept: a broken file stays broken)
    load_hint: str | None = None
    last_used: float = 0.0  # time.monotonic() of its last request
    pending: int = 0  # requests between finding it and handing their job to its engine

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
        """Loaded, and nothing running, waiting or about to be handed over: it may be unloaded."""
        return (self.engine is not None and not self.pending and self.engine.n_running == 0
                and self.engine.n_waiting == 0)

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
                 load_timeout_s: float = 300.0) -> None:
        self.models = [ServedModel(spec) for spec in specs]
        self.default = self.models[0]
        self.load_engine = load
        self.models_max = models_max  # 0: no limit
        self.load_timeout_s = load_timeout_s
        self.lock = threading.Lock()  # guards every ServedModel's engine/loading/pending
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
                       type="invalid_request_error", param="model", code="model_not_found")

    @asynccontextmanager
    async def use(self, name: object) -> AsyncIterator[ServedModel]:
        """The model `name` names, loaded (waiting for it up to load_timeout_s), kept from being unloaded
        until the block ends (by then the request's job is in its engine, which keeps it busy)."""
        served = self.find(name)
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            with self.lock:
                if served.engine is not None:
                    served.pending += 1
                    served.last_used = time.monotonic()
                    break
                if served.load_error:
                    raise ApiError(503, f"the model \"{served.alias}\" could not be loaded: {served.load_error}",
                                   code="load_failed")
                if not served.loading:
                    self._start_loading(served)
            if time.monotonic() > deadline:
                raise ApiError(503, f"the model \"{served.alias}\" is still loading after {self.load_timeout_s:g} s;"
                                    " try again later", code="loading")
            await asyncio.sleep(POLL_S)
        try:
            yield served
        finally:
            with self.lock:
                served.pending -= 1

    # --- loading and unloading ---------------------------------------------------------------------------

    def _start_loading(self, served: ServedModel) -> None:
        """Load `served` on a thread, once there is room (called with the lock held; without room, it waits
        for the next call)."""
        if not self._make_room():
            return
        served.loading = True
        threading.Thread(target=self.load, args=(served,), name=f"llamapyz-load-{served.alias}", daemon=True).start()

    def _make_room(self) -> bool:
        """Whether another model may load now, unloading the least recently used idle one if the pool is full."""
        if not self.models_max:
            return True
        busy = [m for m in self.models if m.engine is not None or m.loading]
        if len(busy) < self.models_max:
            return True
        idle = [m for m in busy if m.idle]
        if not idle:
            return False  # every loaded model is working: wait for one to finish
        self._unload(min(idle, key=lambda m: m.last_used))
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
            served.engine, served.loading, served.last_used = engine, False, time.monotonic()

    def _unload(self, served: ServedModel) -> None:
        """Stop its engine and let its weights, KV cache and mapping go (called with the lock held)."""
        engine, served.engine = served.engine, None
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
