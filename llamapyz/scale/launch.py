"""`llamapyz serve --ray`: connect to a Ray cluster (or start one here), run the application, wait for Ctrl+C.

The only module the command line imports for --ray; it imports Ray, and says how to install it if missing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import replace

from ..errors import LlamapyzError
from ..server import ServeOptions
from .options import ScaleOptions

APP_NAME = "llamapyz"


class RayMissing(LlamapyzError):
    hint = "pip install 'llamapyz[ray]' (or pip install 'ray[serve]' into the Python that runs the archive)"


def require_ray() -> None:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise RayMissing("--ray needs Ray Serve, which is not installed") from None


def threads_per_replica(options: ServeOptions, scale: ScaleOptions) -> int:
    """-t, or this machine's cores shared among the most replicas (each reserves that many CPUs in Ray)."""
    if options.n_threads:
        return options.n_threads
    from ..machine.threads import physical_cores

    return max(1, physical_cores() // scale.most_replicas)


def connect(address: str | None, say: Callable[[str], None]) -> None:
    """Join the cluster at `address`; without one, the cluster running on this machine, else a new local one."""
    import ray

    if address is not None:
        ray.init(address=address, logging_level="warning")
        return
    try:
        ray.init(address="auto", logging_level="warning")
        say("ray: joined the cluster running on this machine")
    except ConnectionError:
        ray.init(include_dashboard=False, logging_level="warning")
        say("ray: started a local cluster (it ends with this command)")


def deploy(options: ServeOptions, scale: ScaleOptions, say: Callable[[str], None] = print) -> str:
    """Run the application on the connected cluster, waiting until every replica has loaded its model; returns
    its URL."""
    from ray import serve

    from .deployment import build

    options = replace(options, n_threads=threads_per_replica(options, scale), open_browser=False)
    serve.start(http_options={"host": options.host, "port": options.port})
    count = f"{scale.min_replicas}..{scale.max_replicas} (autoscaled)" if scale.autoscale else str(scale.replicas)
    say(f"ray: {count} replicas, {options.n_threads} threads each, "
        f"{'prefix-aware routing' if scale.prefix_routing else 'routing by load only'}")
    serve.run(build(options, scale), name=APP_NAME, route_prefix="/")  # returns once every replica is up
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    return f"http://{host}:{options.port}/"


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_on_ray(options: ServeOptions, scale: ScaleOptions, say: Callable[[str], None] = print) -> None:
    """The command: deploy, say where, and keep the application up until Ctrl+C."""
    require_ray()
    from ray import serve

    connect(scale.address, say)
    # SIGTERM (a service manager, `kill`) ends the command as Ctrl+C does: the application is deleted and a local
    # cluster this command started is shut down with it. Set after ray.init, whose own handler would leave the
    # cluster's agent processes running.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        url = deploy(options, scale, say)
        names = ", ".join(spec.alias for spec in options.specs())
        say(f"llamapyz: serving {names} on Ray at {url}  (OpenAI API at {url}v1, Ctrl+C to stop)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
