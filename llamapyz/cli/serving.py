"""The command line's serving side, shared by `llamapyz serve` and an archive's own command: the options, the
models to serve (-m files, a --config file's, or the archive's), and starting the server."""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import LlamapyzError
from ..gguf.reader import load_gguf

F = TypeVar("F", bound=Callable[..., Any])

MODEL_FILE_HINT = ("check the path: llamapyz runs a GGUF model file (.gguf) on this machine, such as those on "
                   "Hugging Face (search for \"GGUF\")")
MAX_API_KEY_CHARS = 4096  # beyond this, proxies and servers (ours: 16 KiB of headers) refuse the header


CPU_TIER_OPTION = click.option(
    "--cpu-tier", default=None, envvar="LLAMAPYZ_CPU_TIER", metavar="TIER",
    help="Use the kernels of this CPU tier instead of the best one this CPU runs: x86-64-avx512[+vnni], "
         "x86-64-avx2[+vnni], x86-64-ssse3, aarch64-dotprod, aarch64-neon (also $LLAMAPYZ_CPU_TIER).")


GPU_OPTIONS = [
    click.option("-ngl", "--n-gpu-layers", type=click.IntRange(min=-1), default=0,
                 help="Run the last N layers on an NVIDIA GPU (llama.cpp's option; -1 or more than the model's "
                      "layers: all of them and the output layer). Needs numba-cuda (pip install llamapyz[cuda], or "
                      "an archive built with --gpu cuda); without a usable GPU, one warning and the CPU."),
    click.option("-mg", "--main-gpu", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Which GPU -ngl uses, when there are several."),
]


def with_options(options: list) -> Callable[[F], F]:
    """A decorator applying click options in the order listed (the first shown first in --help)."""
    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def use_cpu_tier(forced: str | None, say: Callable[[str], None] | None = None) -> None:
    """Detect the CPU and fix the kernels' target before anything is compiled: a CPU below every tier, or a
    forced tier it cannot run, is one error line and exit code 1 (via `friendly_errors`)."""
    from ..machine import cpu

    found = cpu.detect()
    target = cpu.activate(cpu.choose(found, forced))
    say = say or functools.partial(click.echo, err=True)
    say(f"cpu: {target.describe()}{' (forced)' if forced else ''}; {cpu.describe(found)}")



def check_origins(ctx: click.Context, param: click.Parameter, origins: tuple[str, ...]) -> tuple[str, ...]:
    """--cors-origin values as browsers send them in `Origin`: scheme://host[:port], no path (a final / dropped)."""
    checked = []
    for origin in origins:
        origin = origin.rstrip("/")
        if origin != "*" and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]+", origin):
            raise click.BadParameter(f"{origin!r} is not an origin like https://app.example.com:8443 (or *)")
        checked.append(origin)
    return tuple(checked)


def check_autoscale(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """--autoscale MIN..MAX as (MIN, MAX)."""
    if value is None:
        return None
    from ..scale.options import parse_autoscale

    try:
        return parse_autoscale(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


RAY_OPTIONS = [
    click.option("--ray", is_flag=True,
                 help="Serve as replicas on Ray Serve (a running cluster, else a local one), each with -t threads; "
                      "requests sharing a prompt prefix go to the same replica. Needs pip install 'llamapyz[ray]'."),
    click.option("--replicas", type=click.IntRange(min=1), default=None, help="With --ray: this many replicas "
                 "(default 1)."),
    click.option("--autoscale", default=None, metavar="MIN..MAX", callback=check_autoscale,
                 help="With --ray: between MIN and MAX replicas, as the load asks."),
    click.option("--ray-address", default=None, metavar="ADDRESS",
                 help="With --ray: the cluster to join (auto, or ray://HEAD:10001); default: the one running on this "
                      "machine, else a new local one."),
    click.option("--no-prefix-routing", is_flag=True,
                 help="With --ray: route by load only (Ray's default), ignoring prompt prefixes."),
]


SERVE_OPTIONS = [
    click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one)."),
    click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True),
    click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
                 help="Threads (default: physical cores)."),
    click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=0), default=0,
                 help="Context size of each slot in tokens (default: 4096 or the model's maximum if smaller)."),
    click.option("-np", "--parallel", "n_slots", type=click.IntRange(1, 64), default=4, show_default=True,
                 help="Slots: requests decoded together; more wait in a queue."),
    click.option("--queue-size", type=click.IntRange(min=0), default=64, show_default=True,
                 help="Requests that may wait for a slot; beyond that the server answers 503."),
    click.option("-b", "--batch-size", type=click.IntRange(min=1), default=512, show_default=True,
                 help="Prompt tokens processed per batch."),
    click.option("--cache-type", type=click.Choice(["f16", "f32"]), default="f16", show_default=True,
                 help="KV cache element type."),
    click.option("--api-key", default=None, envvar="LLAMAPYZ_API_KEY",
                 help="Require 'Authorization: Bearer KEY' on the API (also $LLAMAPYZ_API_KEY)."),
    click.option("--api-key-file", default=None, type=click.Path(dir_okay=False),
                 help="Read the API key from this file's first line (keeps it off the command line)."),
    click.option("--max-body-mib", type=click.FloatRange(min=0, min_open=True), default=16, show_default=True,
                 help="Largest request body; a bigger one is answered 413."),
    click.option("--body-timeout-s", type=click.FloatRange(min=0, min_open=True), default=30, show_default=True,
                 help="Seconds a client has to send a request's body, counted from its headers; a slower one is "
                      "answered 408 and disconnected."),
    click.option("--header-timeout-s", type=click.FloatRange(min=0, min_open=True), default=10, show_default=True,
                 help="Seconds a client has to send a request's line and headers, counted from connecting (or from "
                      "the previous response); a slower one is disconnected (408 if it sent part)."),
    click.option("--max-connections", type=click.IntRange(min=1), default=None,
                 help="Most connections open at once; more are answered 503 and closed (default: 1024, or less "
                      "to stay within the file-descriptor limit, ulimit -n)."),
    click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
                 help="Also answer requests whose Host header is NAME (repeatable; *.example.com: any name under it; "
                      "*: any). Bound to a loopback address the server answers only localhost, 127.0.0.1 and [::1] "
                      "(against DNS rebinding); bound elsewhere, any Host unless this option is given."),
    click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN", callback=check_origins,
                 help="Let web pages from ORIGIN (e.g. https://app.example.com; *: any) call the API from a "
                      "browser (CORS; repeatable). Default: no CORS headers."),
    click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                 help="A server config: llama-cpp-python's JSON shape (or TOML) with several models, each with its "
                      "model_alias and settings. Options given here override it."),
    click.option("-a", "--alias", default=None,
                 help="Model name shown by the API (default: the file's name); with several models, give each "
                      "a model_alias in --config."),
    click.option("--models-max", type=click.IntRange(min=0), default=4, show_default=True,
                 help="Most models loaded at once (0: no limit); loading another first unloads the least "
                      "recently used idle one."),
    click.option("--preload", is_flag=True,
                 help="Load every model at start (up to --models-max) instead of when a request first names it."),
    click.option("--load-timeout-s", type=click.FloatRange(min=0, min_open=True), default=300, show_default=True,
                 help="How long a request waits for its model to load before a 503."),
    click.option("--model-switch-s", type=click.FloatRange(min=0), default=5, show_default=True,
                 help="With --models-max reached and every loaded model busy, how long a request for another "
                      "model waits before the least recently used one is drained (it finishes what it runs, then "
                      "unloads) to make room; models switch at most once per this time."),
    click.option("--chat-template", default=None,
                 help="Override the model's chat template: chatml, gemma, llama3, plain, or a Jinja2 template text."),
    click.option("--nobrowser", is_flag=True, help="Do not open the chat UI in a browser."),
    CPU_TIER_OPTION,
    *GPU_OPTIONS,
    *RAY_OPTIONS,
    # Defaults for requests that do not set them (llama.cpp's server options of the same names); unset, the
    # API's own defaults apply (`/props` shows them).
    click.option("--temp", "temperature", type=click.FloatRange(0, 5), default=None,
                 help="Default temperature (0: greedy)."),
    click.option("--top-k", type=click.IntRange(min=0), default=None, help="Default top-k (0: off)."),
    # each range the API's own for that field (llamapyz/server/schema.py), so a default given here is never one
    # that every request not setting it would then be refused for
    click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Default top-p."),
    click.option("--min-p", type=click.FloatRange(0, 1), default=None, help="Default min-p."),
    click.option("--repeat-penalty", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Default repeat penalty (1: off)."),
    click.option("-n", "--n-predict", "max_tokens", type=click.IntRange(min=1), default=None,
                 help="Default most tokens per reply (unset: until the end or a full context)."),
]


# the command line's per-model options and the ModelSpec settings they set (for every model, when given)
PER_MODEL = {"n_ctx": "n_ctx", "threads": "n_threads", "n_gpu_layers": "n_gpu_layers", "main_gpu": "main_gpu",
             "batch_size": "batch_size", "chat_template": "chat_template"}


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave the option `name` (on the command line, baked-in arguments included, or its
    environment variable), not just left its default."""
    source = ctx.get_parameter_source(name)
    return source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def read_server_config(path: str | None, say: Callable[[str], None]) -> Any:
    """The --config file (`server.config.ServerConfig`), its warnings said; None without one."""
    if path is None:
        return None
    from ..server.config_file import read_config

    config = read_config(path)
    for warning in config.warnings:
        say(f"warning: {warning}")
    return config


def given_models(config_path: str | None, model_paths: tuple[str, ...]) -> tuple[Any, list]:
    """The --config file (None without one) and the models it and -m name (`ModelSpec`s, each -m one named
    after its file), in that order."""
    from pathlib import Path

    from ..server.config_file import ModelSpec

    config = read_server_config(config_path, functools.partial(click.echo, err=True))
    return config, [*(config.models if config else []), *(ModelSpec(p, Path(p).stem) for p in model_paths)]


def start_server(ctx: click.Context, specs: list, config: Any, **options: Any) -> None:
    """Serve `specs` (`ModelSpec`s: from -m, --config or the archive), the options given on the command line
    overriding the config's."""
    key_source = "$LLAMAPYZ_API_KEY" if ctx.get_parameter_source("api_key") == \
        click.core.ParameterSource.ENVIRONMENT else "--api-key"
    if config is not None:
        for key, value in config.server.items():
            if not given(ctx, key):
                options[key] = value
                if key == "api_key":
                    key_source = f"\"api_key\" in {ctx.params.get('config_path') or 'the config file'}"
    if options["api_key"] is None and options["api_key_file"] is None and os.environ.get("LLAMAPYZ_API_KEY") == "":
        options["api_key"], key_source = "", "$LLAMAPYZ_API_KEY"  # click reads it as unset: refused below
    if options["alias"] is not None:
        if len(specs) > 1:
            raise LlamapyzError("--alias names one model, and there are several",
                                hint="give each its model_alias in the --config file")
        specs[0].alias = options["alias"]
    for option, setting in PER_MODEL.items():
        if given(ctx, option):
            for spec in specs:
                setattr(spec, setting, options[option] or None)  # -c 0: the model's default
    seen: dict[str, Any] = {}
    for spec in specs:
        if spec.alias in seen:
            raise LlamapyzError(f"two models are called \"{spec.alias}\"",
                                hint="give them different model_alias values in a --config file")
        seen[spec.alias] = spec
    run(specs, api_key_source=key_source, **options)


def run(specs: list, host: str, port: int, threads: int | None, n_ctx: int, n_slots: int,
        queue_size: int, batch_size: int, cache_type: str, api_key: str | None, api_key_file: str | None,
        max_body_mib: float, body_timeout_s: float, header_timeout_s: float, max_connections: int | None,
        allowed_hosts: tuple[str, ...],
        cors_origins: tuple[str, ...], alias: str | None, chat_template: str | None, nobrowser: bool,
        n_gpu_layers: int, main_gpu: int, cpu_tier: str | None, models_max: int, preload: bool,
        load_timeout_s: float, model_switch_s: float, ray: bool, replicas: int | None,
        autoscale: tuple[int, int] | None, ray_address: str | None, no_prefix_routing: bool,
        api_key_source: str = "--api-key", **sampling: Any) -> None:
    say = functools.partial(click.echo, err=True)
    scale = scale_options(ray, replicas, autoscale, ray_address, no_prefix_routing, cpu_tier)
    if api_key_file is not None:
        api_key = read_api_key(api_key_file, given=api_key)
    elif api_key is not None:
        check_api_key(api_key, api_key_source)
    use_cpu_tier(cpu_tier, say)
    from ..server import ServeOptions
    from ..server import serve as run_server

    for spec in specs:
        check_model_file(spec.source)  # a missing or broken file is a clear error now, not a 503 later
    if scale is None or scale.address is None:  # a joined cluster listens on its head node, not here
        check_port(host, port)
    options = ServeOptions(models=specs, host=host, port=port, n_ctx=n_ctx or None, n_threads=threads,
                           n_slots=n_slots, max_queue=queue_size, batch_size=batch_size, kv_type=cache_type,
                           api_key=api_key, max_body_bytes=int(max_body_mib * 2**20), body_timeout_s=body_timeout_s,
                           header_timeout_s=header_timeout_s, max_connections=max_connections,
                           allowed_hosts=allowed_hosts, cors_origins=cors_origins, alias=alias,
                           chat_template=chat_template, open_browser=not nobrowser,
                           n_gpu_layers=n_gpu_layers, main_gpu=main_gpu, models_max=models_max,
                           preload=preload, load_timeout_s=load_timeout_s, model_switch_s=model_switch_s,
                           sampling={k: v for k, v in sampling.items() if v is not None})
    if scale is not None:
        from ..scale.launch import serve_on_ray

        serve_on_ray(options, scale, say)
    else:
        run_server(options, say=say)


def scale_options(ray: bool, replicas: int | None, autoscale: tuple[int, int] | None, address: str | None,
                  no_prefix_routing: bool, cpu_tier: str | None) -> Any:
    """The --ray options as a `scale.options.ScaleOptions` (None without --ray), Ray's presence checked first."""
    if not ray:
        for name, value in (("--replicas", replicas), ("--autoscale", autoscale), ("--ray-address", address),
                            ("--no-prefix-routing", no_prefix_routing or None)):
            if value is not None:
                raise click.UsageError(f"{name} needs --ray")
        return None
    if replicas is not None and autoscale is not None:
        raise click.UsageError("give --replicas or --autoscale, not both")
    from ..scale.launch import require_ray
    from ..scale.options import ScaleOptions

    require_ray()
    low, high = autoscale or (None, None)
    return ScaleOptions(replicas=replicas or 1, min_replicas=low, max_replicas=high, address=address,
                        prefix_routing=not no_prefix_routing, cpu_tier=cpu_tier)


def check_port(host: str, port: int) -> None:
    """A port another server holds is a clear error now, not uvicorn's traceback later."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LlamapyzError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                hint="another server may be using that port; pick one with --port") from None


def check_model_file(source: Any) -> None:
    """Open a model's GGUF (a path, or a range of the archive) and close it: a file that is missing, unreadable
    or no GGUF is a `LlamapyzError` with a hint now."""
    from ..server.config_file import has_chat_template

    path = source[0] if isinstance(source, tuple) else source
    try:
        with load_gguf(source) as gguf:
            has_chat_template(source, gguf)  # kept for /v1/models' "base_model"
    except FileNotFoundError:
        raise LlamapyzError(f"model file not found: {path}", hint=MODEL_FILE_HINT) from None
    except OSError as exc:
        raise LlamapyzError(f"cannot read the model file {path}: {exc.strerror or exc}", hint=MODEL_FILE_HINT) from None


def read_api_key(path: str, given: str | None) -> str:
    """The key in the first line of `path` (its line ending dropped, nothing else), checked (`check_api_key`).
    The file must be a regular one, found so before it is read: a FIFO or a device would block the start (or
    never end), so it is looked at first, opened without blocking, and looked at again once open."""
    if given is not None:
        raise LlamapyzError("both --api-key and --api-key-file are given", hint="use one of them")
    where = f"the API key file {path}"
    not_regular = LlamapyzError(f"{where} is not a regular file (a FIFO, a device or a socket would hold up the "
                                "start)", hint="put the key in a plain file")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise not_regular
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, encoding="utf-8", newline="") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the two looks
                raise not_regular
            key = file.readline(MAX_API_KEY_CHARS + 2).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise LlamapyzError(f"cannot read {where}: {exc}") from None
    if not key:
        raise LlamapyzError(f"{where} is empty", hint="put the key on its first line")
    return check_api_key(key, f"--api-key-file {path}")


def check_api_key(key: str, where: str) -> str:
    """`key` if a client can send it, else a `LlamapyzError` saying why not (`where`: the option, variable or
    file that gave it, as the message begins). A client sends it in a header (`Authorization: Bearer KEY`),
    whose value HTTP carries as bytes that servers read as latin-1 and clients write as ASCII, trimmed of
    spaces at both ends; so a key is printable ASCII (space to ~), with no space at either end. An empty one
    would serve without a key, which the user did not ask for."""
    hint = ("use letters, digits and ASCII punctuation (e.g. the output of: python -c \"import secrets; "
            "print(secrets.token_urlsafe())\")")
    if key == "":
        raise LlamapyzError(f"{where}: the API key is empty",
                            hint="give a key, or leave the option out to serve without one")
    if key.startswith("\ufeff"):
        problem = "starts with a byte order mark (U+FEFF, left by some editors), which no client sends"
        hint = "save the file without a byte order mark (UTF-8 without BOM, or ASCII)"
    elif not key.strip():
        problem = "is only whitespace"
    elif key != key.strip(" \t"):
        problem = "starts or ends with whitespace, which HTTP drops from a header before the server sees it"
    elif len(key) > MAX_API_KEY_CHARS:
        problem = f"is {len(key):,} characters long: more than the {MAX_API_KEY_CHARS:,} a header can carry"
    else:
        at, char = next(((i, c) for i, c in enumerate(key) if not " " <= c <= "~"), (-1, ""))
        if at < 0:
            return key
        problem = (f"holds {ascii(char)} (character {at + 1}), which HTTP headers cannot carry: only printable "
                   "ASCII can be sent")
    raise LlamapyzError(f"{where}: the API key {problem}", hint=hint)


