"""`llamapyz serve`: the OpenAI-compatible HTTP server and web UI in front of the engines.

    serve(ServeOptions(model="model.gguf", port=8080))
    serve(ServeOptions(model="a.gguf", models=[ModelSpec("a.gguf", "a"), ModelSpec("b.gguf", "b", n_ctx=8192)]))

The HTTP server starts at once (so /health answers 503 while the model loads), the first model is loaded on
a background thread (every model, with `preload`), then its engine thread starts and /health turns 200. The
others load when a request first names them (`models.ModelPool`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn

from ..errors import LlamapyzError, require_finite
from ..gguf.reader import Source
from ..kernels import kernel_cache
from ..loader import load_model
from ..machine import cpu
from ..model.model import Model, check_memory, settle
from .app import ServerState, create_app, load_webui
from .config_file import ModelSpec
from .connections import HEADER_TIMEOUT_S, ConnectionLimits, connection_cap
from .engine import COMPUTE, Engine
from .pool import ModelPool
from .security import allowed_hosts

DEFAULT_WEBUI = Path(__file__).resolve().parents[2] / "webui"
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this
MAX_HEADER_BYTES = 16 << 10  # a request line and headers beyond it are a 431 (h11's own default, stated)

log = logging.getLogger("llamapyz.server")


@dataclass
class ServeOptions:
    model: Source | None = None  # one model; or `models`
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int | None = None
    n_threads: int | None = None
    n_slots: int = 4
    max_queue: int = 64
    batch_size: int = 512
    kv_type: str = "f16"
    api_key: str | None = None
    max_body_bytes: int = 16 << 20
    body_timeout_s: float | None = 30.0
    header_timeout_s: float | None = HEADER_TIMEOUT_S  # a request's line and headers, from connect (None: no limit)
    max_connections: int | None = None  # open at once; None: from the file-descriptor limit (connection_cap)
    allowed_hosts: tuple[str, ...] = ()  # beyond the loopback names (see security.allowed_hosts)
    cors_origins: tuple[str, ...] = ()
    alias: str | None = None
    chat_template: str | None = None
    open_browser: bool = True
    webui: Path | None = DEFAULT_WEBUI
    sampling: dict[str, Any] = field(default_factory=dict)  # defaults for requests that do not say
    n_gpu_layers: int = 0  # -ngl
    main_gpu: int = 0
    models: list[ModelSpec] = field(default_factory=list)  # several models: their own settings override the above
    models_max: int = 4  # most models loaded at once (0: no limit)
    preload: bool = False  # load every model at start (up to models_max), not on first use
    load_timeout_s: float = 300.0  # how long a request waits for its model to load
    model_switch_s: float = 5.0  # models_max reached: how long a request waits before a busy model is drained

    def specs(self) -> list[ModelSpec]:
        """The models to serve, each setting a model leaves unset filled in from the options above."""
        if not self.models:
            source = self.model[0] if isinstance(self.model, tuple) else self.model
            return [ModelSpec(self.model, self.alias or Path(str(source)).stem, self.chat_template, self.n_ctx,
                              self.n_threads, self.n_gpu_layers, self.main_gpu, self.batch_size)]
        defaults = {"chat_template": self.chat_template, "n_ctx": self.n_ctx, "n_threads": self.n_threads,
                    "n_gpu_layers": self.n_gpu_layers, "main_gpu": self.main_gpu, "batch_size": self.batch_size}
        return [replace(spec, **{k: v for k, v in defaults.items() if getattr(spec, k) is None})
                for spec in self.models]


def engine_loader(options: ServeOptions, several: bool, say=print) -> Callable[[ModelSpec], Engine]:
    """What loads one model and starts its engine (raising what went wrong), for `ModelPool`; with `several`
    models, its lines name the model."""

    def load(spec: ModelSpec) -> Engine:
        said = (lambda text: say(f"{spec.alias}: {text}")) if several else say
        started = time.perf_counter()
        if several:
            said("loading")
        model = load_model(spec.source, n_ctx=spec.n_ctx, n_threads=spec.n_threads, kv_type=options.kv_type,
                           batch_size=spec.batch_size or options.batch_size, n_gpu_layers=spec.n_gpu_layers or 0,
                           main_gpu=spec.main_gpu or 0, gpu_contexts=options.n_slots)
        for line in model.gpu.lines():
            said(line)
        check_memory(model.context_bytes * options.n_slots, f"{options.n_slots} slots of {model.n_ctx} tokens")
        if model.n_ctx > model.config.n_ctx_train:
            said(f"warning: a context of {model.n_ctx} tokens is longer than the {model.config.n_ctx_train} the "
                 "model was trained on: expect worse answers past that")
        if spec.chat_template:
            model.set_chat_template(spec.chat_template)
        model.chat_template.render([{"role": "user", "content": "hi"}])  # fail now, not on the first request
        with COMPUTE:  # another model's engine may be running
            warm_up(model, said)
        settle()
        engine = Engine(model, n_slots=options.n_slots, max_queue=options.max_queue).start()
        kv_mib = model.cache.n_bytes * options.n_slots / 2**20
        said(f"model loaded in {time.perf_counter() - started:.1f} s: n_ctx {model.n_ctx}, {options.n_slots} slots "
             f"(KV cache up to {kv_mib:.0f} MiB), {model.n_threads} threads")
        return engine

    return load


def load_engine(options: ServeOptions, state: ServerState, say=print) -> None:
    """Load the first model (every one, up to models_max, with `preload`); on failure the server stays up and
    /health reports the error."""
    pool = state.pool
    for served in pool.models[:(pool.models_max or None) if options.preload else 1]:
        pool.load(served)
        if served.load_error and served is pool.default:
            return
    pool.started = True


def warm_up(model: Model, say=None) -> None:
    """A short prefill and a batched decode step, so the first request does not wait for the kernels; their
    logits must be finite (every layer's matrices and the output layer took part: NaN or inf in any of them
    is a load error now, `NonFiniteError`, rather than every request's).

    On the first run for this CPU target (kernels neither precompiled into the archive nor cached by an
    earlier run) that compiles them, which takes a while: say so."""
    target = cpu.active().name
    formats = list({t.type_name for t in model.gguf.tensors.values()})
    fresh = not kernel_cache.is_warm(target, formats)
    started = time.perf_counter()
    if fresh and say:
        say(f"compiling the kernels for {target} (first run on this CPU tier; later runs load them) …")
    context = model.new_context()  # one is enough: kernels take the same types for any number of sequences
    tokens = model.tokenize("Hello, world.")
    require_finite(model.prefill(tokens, context), "logits for a test prompt")
    require_finite(model.decode_batch([tokens[-1]], [context]), "logits for a test prompt")
    if fresh:
        kernel_cache.mark_warm(target, formats)
        if say:
            say(f"kernels compiled in {time.perf_counter() - started:.1f} s")


def create_state(options: ServeOptions, say=print) -> ServerState:
    """The app's shared state, no model loaded yet (see `load_engine`): what a server, or each replica of a
    scaled-out one (llamapyz/scale), builds its app from."""
    specs = options.specs()
    pool = ModelPool(specs, engine_loader(options, len(specs) > 1, say), models_max=options.models_max,
                     load_timeout_s=options.load_timeout_s, switch_s=options.model_switch_s)
    return ServerState(pool=pool, api_key=options.api_key, max_body_bytes=options.max_body_bytes,
                       body_timeout_s=options.body_timeout_s,
                       allowed_hosts=allowed_hosts(options.host, options.allowed_hosts),
                       cors_origins=tuple(options.cors_origins), webui=load_webui(options.webui),
                       sampling_defaults=dict(options.sampling))


def create_server(options: ServeOptions, say=print) -> tuple[ServerState, uvicorn.Server]:
    """The app's shared state (no model loaded yet: see `load_engine`) and the uvicorn server that will run it."""
    state = create_state(options, say)
    # h11, not "auto": the limits below are h11's (httptools, where installed, would ignore them), kept by our
    # subclass of uvicorn's h11 protocol (connections.py: the head's deadline and size, the connection cap).
    # No limit_concurrency: uvicorn checks it only once a request's head is in, counting idle and stalled
    # connections too, so stalled sockets would pass it and turn real clients away; the engine's queue
    # (--queue-size, then 503) bounds the work, the connection cap the sockets.
    limits = ConnectionLimits(options.header_timeout_s, connection_cap(options.max_connections, say))
    config = uvicorn.Config(create_app(state), host=options.host, port=options.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2, http=limits.protocol(),
                            timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    return state, uvicorn.Server(config)


def has_display() -> bool:
    """Whether a graphical browser can open. On Linux and the BSDs without X11 or Wayland, `webbrowser` would
    start a text browser (lynx, w3m) that takes over the terminal the server logs to."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def serve(options: ServeOptions, say=print) -> None:
    state, server = create_server(options, say)
    names = ", ".join(served.alias for served in state.pool.models)
    url = f"http://{'127.0.0.1' if options.host in ('0.0.0.0', '::') else options.host}:{options.port}/"
    loader = threading.Thread(target=load_engine, args=(options, state, say), name="llamapyz-load", daemon=True)

    def on_ready() -> None:
        loader.join()
        if state.engine is None:  # /health has said 503 with the error meanwhile; the process ends with it
            server.should_exit = True
            return
        say(f"llamapyz: serving {names} at {url}  (OpenAI API at {url}v1, Ctrl+C to stop)")
        if options.open_browser and has_display():
            webbrowser.open(url)
        elif options.open_browser:
            say("no display found: open the URL above in a browser")

    shutdown = server.shutdown

    async def stop_engines_first(sockets: Any = None) -> None:
        # Ctrl+C: every job ends now ("the server is shutting down"; the engine ends those in its slots, the
        # queued ones are ended here), so open streams end and their connections close within uvicorn's
        # graceful wait, rather than being cancelled after it (a traceback each)
        await asyncio.to_thread(state.pool.stop)
        for served in state.pool.models:
            for job in list(served.engine.waiting) if served.engine is not None else []:
                job.emit("error", LlamapyzError("the server is shutting down"))
        await shutdown(sockets)

    server.shutdown = stop_engines_first
    loader.start()
    threading.Thread(target=on_ready, daemon=True).start()
    try:
        server.run()
    finally:
        state.pool.stop()
    if state.load_error:
        raise LlamapyzError(f"the model could not be loaded: {state.load_error}", hint=state.pool.default.load_hint)
