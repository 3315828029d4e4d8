"""The endpoints that describe the server and its model, and the tokenizer's: /v1/models, /health,
/tokenize, /detokenize, /props, /metrics.

The routes that describe (/v1/models, /health, /props, /metrics) never load a model, nor unload one to make
room: they answer from what is known. A GET must not be able to swap the models of a server (any web page
can make a browser send one, and it would cost a load's seconds and memory). For a model that is not
loaded, /props answers 200 with `"loaded": false`, its state and what its spec says (`unloaded_props`), and
/metrics answers zero counters (an engine's counters start at its load). The tokenizer's routes need the
model's vocabulary, so they load it, as a completion would.

They read `served.engine` once and use it without awaiting anything in between: a model is only unloaded on
the event loop (`ModelPool._arrange`), so the engine cannot go while they read it.
"""

from __future__ import annotations

import collections
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..machine import cpu
from ..version import __version__
from . import schema
from .http import read_json, server_state
from .jobs import token_text
from .pool import ServedModel
from .schema import ERROR_TYPES, RETRY_FAILED_S, RETRY_SOON_S, ApiError
from .state import ServerState
from .text_bounds import check_text_fits


async def models(request: Request) -> Response:
    """The models this server runs, each with its state (loaded, loading, not loaded, failed); the loaded
    ones with their metadata."""
    state = server_state(request)
    data = []
    for served in state.pool.models:
        entry = {"id": served.alias, "object": "model", "created": int(state.started), "owned_by": "llamapyz",
                 "status": served.state, "base_model": served.spec.base_model}
        engine = served.engine
        if engine is not None:
            model = engine.model
            entry["meta"] = {"n_vocab": model.n_vocab, "n_ctx": model.n_ctx, "n_ctx_train": model.config.n_ctx_train,
                             "n_embd": model.n_embd, "size": model.file_bytes, "architecture": model.config.arch}
        data.append(entry)
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    """200 {"status": "ok"} once the default model (the first; with --preload, every one) is loaded; 503 while
    it loads (Retry-After: RETRY_SOON_S, a poll) or if loading failed (RETRY_FAILED_S). The others load when
    first asked for."""
    pool = server_state(request).pool
    served = pool.default
    if served.engine is not None and pool.started:
        return JSONResponse({"status": "ok"})
    if served.load_error:
        message = f"the model could not be loaded: {served.load_error}"
        return JSONResponse({"status": "error", "error": {"message": message, "code": 503}}, 503,
                            headers={"Retry-After": str(RETRY_FAILED_S)})
    return JSONResponse({"status": "loading model", "error": {"message": "Loading model", "type": ERROR_TYPES[503],
                                                              "code": 503}}, 503,
                        headers={"Retry-After": str(RETRY_SOON_S)})


async def tokenize(request: Request) -> Response:
    """Text to token ids (llama.cpp's /tokenize). A text whose length alone shows it is more tokens than the
    model's context is refused untokenized (400 `context_length_exceeded`, `text_bounds`): no prompt of this
    model could hold it, and tokenizing megabytes holds the GIL every other request needs; tokenize such a
    text in pieces."""
    fields = schema.validate(await read_json(request), schema.TOKENIZE)
    async with server_state(request).pool.use(fields["model"], request.is_disconnected) as served:
        model = served.model
    check_text_fits(model, len(fields["content"]), model.n_ctx, "the content",
                    f"more than the context of {model.n_ctx}: tokenize it in pieces", "content")
    tokens = await run_in_threadpool(model.tokenize, fields["content"], add_special=fields["add_special"])
    if fields["with_pieces"]:
        return JSONResponse({"tokens": [{"id": t, "piece": token_text(model, t)} for t in tokens]})
    return JSONResponse({"tokens": tokens})


async def detokenize(request: Request) -> Response:
    """Token ids to text (llama.cpp's /detokenize)."""
    fields = schema.validate(await read_json(request), schema.DETOKENIZE)
    async with server_state(request).pool.use(fields["model"], request.is_disconnected) as served:
        model = served.model
    tokens = fields["tokens"]
    if tokens and (min(tokens) < 0 or max(tokens) >= model.n_vocab):
        raise ApiError(400, f"token ids must be in [0, {model.n_vocab})", param="tokens")
    return JSONResponse({"content": await run_in_threadpool(model.detokenize, tokens)})


async def props(request: Request) -> Response:
    """Model metadata and server settings (llama.cpp's /props; `?model=NAME` for another than the first), with
    `"loaded": true`; for a model that is not loaded, what is known without loading it (`unloaded_props`)."""
    state = server_state(request)
    served = state.pool.find(request.query_params.get("model"))
    engine = served.engine  # read once (see the module's docstring)
    if engine is None:
        return JSONResponse(unloaded_props(served, state))
    model = engine.model
    metadata = {k: v for k, v in model.gguf.metadata.items()
                if k.startswith("general.") and isinstance(v, (str, int, float, bool))}
    return JSONResponse({
        "model_alias": served.alias, "model_path": str(model.gguf.path), "build_info": f"llamapyz {__version__}",
        "loaded": True, "status": served.state, "n_ctx": model.n_ctx, "total_slots": len(engine.slots),
        "n_vocab": model.n_vocab, "n_embd": model.n_embd,
        "n_layer": model.config.n_layer, "architecture": model.config.arch, "file_bytes": model.file_bytes,
        "n_threads": model.n_threads, "cpu_tier": cpu.active().name, "gpu": model.gpu.as_json(),
        "eog_ids": sorted(model.tokenizer.eog_ids),
        "chat_template": model.chat_template.source,
        "chat_template_origin": model.chat_template.origin, "metadata": metadata,
        "default_generation_settings": {"n_ctx": model.n_ctx, **generation_defaults(state)},
    })


def unloaded_props(served: ServedModel, state: ServerState) -> dict:
    """/props of a model that is not loaded: its name, file and state ("not loaded", "loading" or "failed",
    with `load_error`), the settings its spec gives (`n_ctx` is null where the file decides it at load) and
    the server's sampling defaults. Nothing read from the file: that would be half a load."""
    source = served.spec.source
    return {"model_alias": served.alias, "model_path": str(Path(source[0] if isinstance(source, tuple) else source)),
            "build_info": f"llamapyz {__version__}", "loaded": False, "status": served.state,
            "load_error": served.load_error, "n_ctx": served.spec.n_ctx, "settings": served.spec.settings(),
            "default_generation_settings": {"n_ctx": served.spec.n_ctx, **generation_defaults(state)}}


def generation_defaults(state: ServerState) -> dict:
    """The sampling settings a request gets for the fields it does not set: the server's, else the schema's.
    (/props puts them beside n_ctx, where llama.cpp's clients read a slot's context size.)"""
    return {**{f.name: f.default for f in schema.SAMPLING if f.default is not None}, **state.sampling_defaults}


async def metrics(request: Request) -> Response:
    """Prometheus text format (the first model's; `?model=NAME` for another). A model that is not loaded has
    no engine, so no counts: its counters are zero (they start again at each load)."""
    served = server_state(request).pool.find(request.query_params.get("model"))
    engine = served.engine  # read once (see the module's docstring)
    if engine is None:
        text = metrics_text({}, {"prompt": 0.0, "decode": 0.0}, 0, 0)
    else:
        text = metrics_text(engine.stats, engine.busy_s, engine.n_running, engine.n_waiting)
    return Response(text, media_type="text/plain; version=0.0.4")


def metrics_text(stats: dict, busy: dict, n_running: int, n_waiting: int) -> str:
    """An engine's counters (or several engines' summed: llamapyz/scale) in Prometheus' text format."""
    stats = collections.Counter(stats)

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
        ("requests_processing", "gauge", "Requests in a slot.", n_running),
        ("requests_deferred", "gauge", "Requests waiting for a slot.", n_waiting),
        ("requests_total", "counter", "Requests completed.", stats["requests"]),
        ("requests_cancelled_total", "counter", "Requests cancelled (client went away).", stats["requests_cancelled"]),
        ("n_decode_total", "counter", "Batched decode steps.", stats["decode_steps"]),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP llamapyz:{name} {help_text}", f"# TYPE llamapyz:{name} {kind}", f"llamapyz:{name} {value}"]
    return "\n".join(lines) + "\n"
