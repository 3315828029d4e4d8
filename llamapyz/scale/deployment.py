"""The Ray Serve application: `LlamapyzFront` (the ingress: reads each request, finds its prefix keys, forwards
it) and `LlamapyzReplica` (N of them: each builds the usual server, `replica.ReplicaServer`, in its own
process, so the model is loaded there and never pickled), plus `MetricsBoard`, where replicas post their
counters for the front's aggregated /metrics.

Why a front at all: Ray's HTTP proxy chooses a replica from the URL and headers, before the body has arrived,
so nothing that routes on the prompt can sit there. The front is cheap (no model, no CPU reserved) and passes
responses through piece by piece, so streams stay streams.

Failures: a replica that dies (its process killed, its node gone) ends its requests with a clean error: before
anything was answered, the front tries another replica once, then answers 503 `replica_failed`; in the
middle of a stream, the stream ends with an error event of that shape (the status line is long sent). Ray
replaces the replica (`num_replicas` is a target), and also one whose `check_health` fails: an engine thread
that died or a /health that is not 200, checked every HEALTH_PERIOD_S, given HEALTH_TIMEOUT_S to answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse

from ..server import ServeOptions
from ..server.http import error_response, read_body
from ..server.info import metrics_text
from ..server.schema import RETRY_SOON_S, ApiError
from .options import ScaleOptions
from .prefix import routing_keys
from .replica import ReplicaServer, Request

log = logging.getLogger("llamapyz.scale")

HEALTH_PERIOD_S = 5.0  # how often Ray calls check_health (its default: 10)
HEALTH_TIMEOUT_S = 10.0  # a check that takes longer counts as failed (its default: 30)
METRICS_PUSH_S = 2.0  # how often a replica posts its counters
METRICS_STALE_S = 3 * METRICS_PUSH_S  # a replica silent this long is gone: its gauges drop out, counters stay
RETRIES = 1  # another replica for a request whose replica failed before answering anything
FRONT_MAX_ONGOING = 10_000  # the front only waits on replicas; the replicas' queues bound the work
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}  # a line per request is Ray's default: too much


@ray.remote(num_cpus=0)
class MetricsBoard:
    """Each replica's latest counters, summed on demand."""

    def __init__(self) -> None:
        self.reports: dict[str, tuple[float, dict]] = {}

    def report(self, replica: str, stats: dict) -> None:
        self.reports[replica] = (time.monotonic(), stats)

    def total(self, model: str | None) -> dict:
        now, out = time.monotonic(), {"stats": {}, "busy_s": {"prompt": 0.0, "decode": 0.0}, "running": 0,
                                      "waiting": 0, "replicas": 0}
        for posted, models in self.reports.values():
            fresh = now - posted < METRICS_STALE_S
            out["replicas"] += fresh
            entry = models.get(model) if model else next(iter(models.values()), None)
            if entry is None:
                continue
            for name, value in entry["stats"].items():
                out["stats"][name] = out["stats"].get(name, 0) + value
            for name, value in entry["busy_s"].items():
                out["busy_s"][name] += value
            if fresh:  # what is running now: only where something still runs
                out["running"] += entry["running"]
                out["waiting"] += entry["waiting"]
        return out


class LlamapyzReplica:
    def __init__(self, options: ServeOptions, board: ray.actor.ActorHandle) -> None:
        name = serve.get_replica_context().replica_id.unique_id
        self.server = ReplicaServer(options, name=name, say=lambda text: print(f"llamapyz replica {name}: {text}"))
        self.board, self.name = board, name
        threading.Thread(target=self._post_metrics, name="llamapyz-metrics", daemon=True).start()

    async def handle(self, request: Request, body: bytes, prefix_keys: tuple = ()):
        """The response, piece by piece (`ReplicaServer.handle`); prefix_keys are for the router only."""
        async for item in self.server.handle(request, body):
            yield item

    async def check_health(self) -> None:
        await self.server.check_health()

    def _post_metrics(self) -> None:
        while True:
            try:
                self.board.report.remote(self.name, self.server.stats())
            except RuntimeError:  # a counter changed while it was copied: next time
                pass
            time.sleep(METRICS_PUSH_S)


class LlamapyzFront:
    def __init__(self, replicas: DeploymentHandle, board: ray.actor.ActorHandle, max_body_bytes: int,
                 body_timeout_s: float | None, prefix_routing: bool) -> None:
        self.replicas = replicas.options(stream=True)
        self.board = board
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s
        self.prefix_routing = prefix_routing

    async def __call__(self, http: HttpRequest) -> Response:
        """The replica's answer to the request, relayed. The body is read here with the single server's
        `read_body` (--max-body-mib: 413, --body-timeout-s: 408, the same errors); whether it may be read as
        JSON (its Content-Type, else a 415) is the replica's to say: it runs the single server's app, whose
        `read_json` decides, so a request gets the same answer (a 404 for an unknown path, a 415 for a body
        that is not sent as JSON) with or without --ray. The front's own refusals take the single server's
        `error_response` (Retry-After on a 503); the replicas' answers carry theirs."""
        try:
            body = await read_body(http, self.max_body_bytes, self.body_timeout_s)
        except ApiError as exc:
            return error_response(exc)
        request = Request(http.method, http.url.path, http.url.query.encode(), tuple(http.scope["headers"]),
                          tuple(http.client) if http.client else None, http.url.scheme)
        keys = routing_keys(request.path, body) if self.prefix_routing else ()
        for attempt in range(RETRIES + 1):
            stream = self.replicas.handle.remote(request, body, prefix_keys=keys)
            try:
                _, status, headers = await stream.__anext__()
                break
            except RayActorError:
                log.warning("a replica failed before answering (attempt %d)", attempt + 1)
            except BackPressureError:  # --queue-size requests wait for a replica already: as the engine's full queue
                return error_response(ApiError(503, "the server is busy: every replica is full and the queue too; "
                                                    "try again later", code="overloaded", retry_after_s=RETRY_SOON_S))
            except RayTaskError as exc:
                log.error("a replica failed: %s", exc)
                return error_response(ApiError(500, "internal server error (see the replica's log)"))
        else:
            return error_response(REPLICA_FAILED)
        if request.method == "GET" and request.path == "/metrics" and status == 200:
            # the replica's answer says the request passed its guards (Host, API key, model name); the numbers
            # are every replica's, summed
            stream.cancel()
            return await self.metrics(http.query_params.get("model"))
        media = dict((k.decode().lower(), v.decode()) for k, v in headers).get("content-type", "")
        response = StreamingResponse(relay(stream, media.startswith("text/event-stream")), status_code=status)
        response.raw_headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        return response

    async def metrics(self, model: str | None) -> Response:
        """The replicas' counters summed (gauges: the replicas alive now), in the single server's format, plus
        how many replicas reported lately. `model`: an alias (default: the first model)."""
        total = await self.board.total.remote(model)
        text = metrics_text(total["stats"], total["busy_s"], total["running"], total["waiting"])
        text += ("# HELP llamapyz:replicas Replicas that reported in the last few seconds.\n"
                 f"# TYPE llamapyz:replicas gauge\nllamapyz:replicas {total['replicas']}\n")
        return Response(text, media_type="text/plain; version=0.0.4")


REPLICA_FAILED = ApiError(503, "the replica serving this request failed; try again", code="replica_failed",
                          retry_after_s=RETRY_SOON_S)  # Ray replaces it; the other replicas answer meanwhile


async def relay(stream, events: bool):
    """The replica's body pieces; if it fails mid-way, an error event ends a stream of events (else the body
    is cut short: the client sees a broken response, never a hang)."""
    try:
        async for _, piece in stream:
            yield piece
    except (RayActorError, RayTaskError) as exc:
        log.warning("a replica failed while answering: %s", type(exc).__name__)
        if events:
            yield f"data: {json.dumps(REPLICA_FAILED.body())}\n\n".encode()
    finally:
        stream.cancel()  # the client went away (or we are done): the replica stops the request's job


def build(options: ServeOptions, scale: ScaleOptions):
    """The application, ready for `serve.run`: the front bound to the replicas' deployment."""
    threads = options.n_threads or 1
    gpu = any(spec.n_gpu_layers for spec in options.specs())  # -ngl, or a config's n_gpu_layers
    env = {"LLAMAPYZ_CPU_TIER": scale.cpu_tier} if scale.cpu_tier else {}
    replica = serve.deployment(LlamapyzReplica).options(
        name="llamapyz-replica",
        ray_actor_options={"num_cpus": threads, "num_gpus": 1 if gpu else 0, "runtime_env": {"env_vars": env}},
        max_ongoing_requests=2 * options.n_slots,  # a queue as deep as the slots: the next one is ready at once
        max_queued_requests=max(1, options.max_queue),  # --queue-size wait in the front, more get a 503 (Ray: >= 1)
        health_check_period_s=HEALTH_PERIOD_S, health_check_timeout_s=HEALTH_TIMEOUT_S,
        graceful_shutdown_timeout_s=5, logging_config=LOGGING,
        **({"autoscaling_config": {"min_replicas": scale.min_replicas, "max_replicas": scale.max_replicas,
                                   "target_ongoing_requests": options.n_slots}} if scale.autoscale
           else {"num_replicas": scale.replicas}),
        **({"request_router_config": RequestRouterConfig(
            request_router_class="llamapyz.scale.router.PrefixAffinityRouter",
            request_router_kwargs={"n_slots": options.n_slots})} if scale.prefix_routing else {}))
    front = serve.deployment(LlamapyzFront).options(name="llamapyz-front", ray_actor_options={"num_cpus": 0},
                                                    max_ongoing_requests=FRONT_MAX_ONGOING, logging_config=LOGGING)
    board = MetricsBoard.options(name="llamapyz-metrics", namespace="llamapyz", get_if_exists=True).remote()
    replica_options = replace(options, open_browser=False, webui=options.webui)
    return front.bind(replica.bind(replica_options, board), board, options.max_body_bytes, options.body_timeout_s,
                      scale.prefix_routing)
