"""The endpoints that describe the server and its model, and the tokenizer's: /v1/models, /health,
/tokenize, /detokenize, /props, /metrics."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__, cpu
from . import schema
from .http import endpoint, read_json, ready_state
from .jobs import token_text
from .schema import ApiError
from .state import ServerState


@endpoint
async def models(request: Request) -> Response:
    """The one model this server runs."""
    state = ready_state(request)
    model = state.model
    meta = {"n_vocab": model.n_vocab, "n_ctx": model.n_ctx, "n_ctx_train": model.config.n_ctx_train,
            "n_embd": model.n_embd, "size": model.file_bytes, "architecture": model.config.arch}
    return JSONResponse({"object": "list", "data": [
        {"id": state.model_alias, "object": "model", "created": int(state.started), "owned_by": "llamapyz",
         "meta": meta}]})


async def health(request: Request) -> Response:
    """200 {"status": "ok"} once the model is loaded; 503 while loading (or if loading failed)."""
    state: ServerState = request.app.state.llamapyz
    if state.engine is not None:
        return JSONResponse({"status": "ok"})
    if state.load_error:
        return JSONResponse({"status": "error", "error": {"message": state.load_error, "code": 503}}, 503)
    return JSONResponse({"status": "loading model", "error": {"message": "Loading model", "type": "unavailable_error",
                                                              "code": 503}}, 503)


@endpoint
async def tokenize(request: Request) -> Response:
    """Text to token ids (llama.cpp's /tokenize)."""
    state = ready_state(request)
    fields = schema.validate(await read_json(request), schema.TOKENIZE)
    tokens = await run_in_threadpool(state.model.tokenize, fields["content"], add_special=fields["add_special"])
    if fields["with_pieces"]:
        return JSONResponse({"tokens": [{"id": t, "piece": token_text(state.model, t)} for t in tokens]})
    return JSONResponse({"tokens": tokens})


@endpoint
async def detokenize(request: Request) -> Response:
    """Token ids to text (llama.cpp's /detokenize)."""
    state = ready_state(request)
    fields = schema.validate(await read_json(request), schema.DETOKENIZE)
    tokens = fields["tokens"]
    if tokens and (min(tokens) < 0 or max(tokens) >= state.model.n_vocab):
        raise ApiError(400, f"token ids must be in [0, {state.model.n_vocab})", param="tokens")
    return JSONResponse({"content": await run_in_threadpool(state.model.detokenize, tokens)})


@endpoint
async def props(request: Request) -> Response:
    """Model metadata and server settings (llama.cpp's /props)."""
    state = ready_state(request)
    model, engine = state.model, state.engine
    metadata = {k: v for k, v in model.gguf.metadata.items()
                if k.startswith("general.") and isinstance(v, (str, int, float, bool))}
    return JSONResponse({
        "model_alias": state.model_alias, "model_path": str(model.gguf.path), "build_info": f"llamapyz {__version__}",
        "n_ctx": model.n_ctx, "total_slots": len(engine.slots), "n_vocab": model.n_vocab, "n_embd": model.n_embd,
        "n_layer": model.config.n_layer, "architecture": model.config.arch, "file_bytes": model.file_bytes,
        "n_threads": model.n_threads, "cpu_tier": cpu.active().name, "gpu": model.gpu.as_json(),
        "eog_ids": sorted(model.tokenizer.eog_ids),
        "chat_template": model.chat_template.source,
        "chat_template_origin": model.chat_template.origin, "metadata": metadata,
        "default_generation_settings": {**{f.name: f.default for f in schema.SAMPLING if f.default is not None},
                                        **state.sampling_defaults},
    })


@endpoint
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    state = ready_state(request)
    engine = state.engine
    stats, busy = engine.stats, engine.busy_s

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
        ("requests_processing", "gauge", "Requests in a slot.", engine.n_running),
        ("requests_deferred", "gauge", "Requests waiting for a slot.", engine.n_waiting),
        ("requests_total", "counter", "Requests completed.", stats["requests"]),
        ("requests_cancelled_total", "counter", "Requests cancelled (client went away).", stats["requests_cancelled"]),
        ("n_decode_total", "counter", "Batched decode steps.", stats["decode_steps"]),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP llamapyz:{name} {help_text}", f"# TYPE llamapyz:{name} {kind}", f"llamapyz:{name} {value}"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
