"""The `llamapyz` command line: one click group with `inspect`, `tokenize`, `run` and `serve` (a checkout adds
`build`: `llamapyz/__main__.py`).

Errors are translated here, once: a `LlamapyzError` becomes one line on stderr plus a hint, exit code 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import numpy as np

from ..errors import LlamapyzError, clip
from ..gguf.reader import GGUFFile, load_gguf
from ..tokenizer import Tokenizer
from ..version import __version__
from .serving import (
    CPU_TIER_OPTION,
    GPU_OPTIONS,
    MODEL_FILE_HINT,
    SERVE_OPTIONS,
    given_models,
    start_server,
    use_cpu_tier,
    with_options,
)

F = TypeVar("F", bound=Callable[..., Any])
ARRAY_PREVIEW = 8  # array elements shown by `inspect` unless --full-arrays


def friendly_errors(func: F) -> F:
    """Run a command, turning llamapyz errors into one line and a hint instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LlamapyzError as exc:
            click.echo(f"error: {clip(str(exc))}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(1)
        except BrokenPipeError:  # `llamapyz inspect … | head`: the reader left, nothing to report
            sys.stderr.close()
            sys.exit(0)
        except OSError as exc:
            click.echo(clip(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class _UsageErrors:
    """click's usage errors (an unknown option, a bad value, a missing file) in our `error:` / `hint:` form
    with exit code 1, like every other error; click itself prints its usage text and exits 2."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        try:
            return super().main(args, prog_name, standalone_mode=False, **extra)  # type: ignore[misc]
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else prog_name or "llamapyz"
            click.echo(f"error: {clip(exc.format_message())}", err=True)
            click.echo(f"hint: {getattr(exc, 'hint', None) or f'`{command} --help` lists the options'}", err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"error: {clip(exc.format_message())}", err=True)
            sys.exit(1)


class FriendlyGroup(_UsageErrors, click.Group):
    pass


class FriendlyCommand(_UsageErrors, click.Command):
    pass


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llamapyz")
def main() -> None:
    """llamapyz: one GGUF model, one self-running Python file."""


class ModelFile(click.Path):
    """A GGUF file that must exist: one that does not is the usual option error, with a hint about models
    instead of "--help lists the options"."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, readable=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            exc.hint = MODEL_FILE_HINT  # type: ignore[attr-defined]  # read by _UsageErrors
            raise


model_file = ModelFile()


# --- inspect -------------------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=model_file)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--full-arrays", is_flag=True, help="Print every element of array values (token lists!).")
@click.option("--layers", is_flag=True, help="Print the model's recipe instead: the steps of each layer, as every "
                                             "backend runs them (sliding and global layers, experts).")
@friendly_errors
def inspect(file: str, as_json: bool, full_arrays: bool, layers: bool) -> None:
    """Show the metadata and tensor table of a GGUF FILE (like gguf-dump), or with --layers its recipe."""
    from ..model.weights import support  # imports numba: only where needed

    with load_gguf(file) as gguf:
        problem = support(gguf)
        if layers:  # while the file is open: the recipe reads which tensors it holds (closing forgets them)
            _print_recipe(file, gguf, problem, as_json)
            return
        report = _describe(gguf, full_arrays)
    arch = gguf.metadata.get("general.architecture")
    report["architecture"] = {"name": arch, "supported": problem is None, "problem": problem}
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    click.echo(f"{file}: GGUF v{report['version']}, {len(report['metadata'])} metadata entries, "
               f"{len(report['tensors'])} tensors, alignment {report['alignment']}, "
               f"data at offset {report['data_offset']}")
    click.echo(f"architecture: {arch}: " + ("supported" if problem is None else f"not supported: {problem}"))
    click.echo("\nmetadata:")
    width = max((len(k) for k in report["metadata"]), default=0)
    for key, entry in report["metadata"].items():
        click.echo(f"  {key:<{width}}  {entry['type']:<14} {_format_value(entry)}")
    click.echo("\ntensors:")
    click.echo(f"  {'#':>4}  {'name':<32} {'type':<7} {'shape':<22} {'bytes':>12}")
    for i, t in enumerate(report["tensors"]):
        shape = "x".join(map(str, t["shape"]))
        click.echo(f"  {i:>4}  {t['name']:<32} {t['type']:<7} {shape:<22} {t['n_bytes']:>12,}")
    total = sum(t["n_bytes"] for t in report["tensors"])
    click.echo(f"\n  {len(report['tensors'])} tensors, {total:,} bytes ({total / 2**20:.1f} MiB)")


def _print_recipe(file: str, gguf: GGUFFile, problem: str | None, as_json: bool) -> None:
    """The recipe (`model.recipe`) of a file llamapyz runs; for another, the reason it does not."""
    from ..model.hparams import ModelConfig
    from ..model.recipe import recipe

    if problem is not None:
        raise LlamapyzError(f"{file}: no recipe: {problem}", hint="`llamapyz inspect FILE` shows its metadata and "
                                                                   "tensors")
    steps = recipe(ModelConfig.from_metadata(gguf.metadata), gguf.tensors)
    click.echo(json.dumps(steps.as_json(), indent=2, ensure_ascii=False) if as_json else str(steps))


def _describe(gguf: GGUFFile, full_arrays: bool) -> dict[str, Any]:
    metadata = {}
    for key, value in gguf.metadata.items():
        entry: dict[str, Any] = {"type": gguf.value_types[key]}
        if isinstance(value, (list, np.ndarray)):
            entry["length"] = len(value)
            shown = value if full_arrays else value[:ARRAY_PREVIEW]
            entry["value"] = _plain(shown)
            entry["truncated"] = len(shown) < len(value)
        else:
            entry["value"] = value
        metadata[key] = entry
    tensors = [
        {"name": t.name, "type": t.type_name, "shape": list(t.ne), "n_elements": t.n_elements,
         "n_bytes": t.n_bytes, "offset": t.offset}
        for t in gguf.tensors.values()
    ]
    return {"version": gguf.version, "alignment": gguf.alignment, "data_offset": gguf.data_offset,
            "metadata": metadata, "tensors": tensors}


def _plain(value: Any) -> Any:
    """numpy arrays and nested lists -> JSON-ready lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _format_value(entry: dict[str, Any]) -> str:
    text = json.dumps(entry["value"], ensure_ascii=False)
    if "length" in entry:
        text = f"[{entry['length']}] {text}" + (" …" if entry["truncated"] else "")
    return text if len(text) <= 100 else text[:99] + "…"


# --- tokenize ------------------------------------------------------------------------------------------


@main.command()
@click.option("-m", "--model", "model", type=model_file, required=True, help="GGUF model file.")
@click.option("--no-bos", is_flag=True, help="Do not add BOS/EOS even where the model asks for them.")
@click.option("--no-special", is_flag=True, help="Treat special-token text like <|im_start|> as plain text.")
@click.argument("text")
@friendly_errors
def tokenize(model: str, no_bos: bool, no_special: bool, text: str) -> None:
    """Print the token ids of TEXT as a JSON list."""
    tokenizer = Tokenizer.from_gguf(model)
    click.echo(json.dumps(tokenizer.encode(text, add_special=not no_bos, parse_special=not no_special)))


# --- run -----------------------------------------------------------------------------------------------


@main.command()
@click.option("-m", "--model", "model_path", type=model_file, required=True, help="GGUF model file.")
@click.option("-p", "--prompt", required=True, help="Prompt text (with --chat: the user's message).")
@click.option("-n", "--n-predict", "max_tokens", type=click.IntRange(min=0), default=256, show_default=True,
              help="Most tokens to generate.")
@click.option("--temp", "temperature", type=click.FloatRange(min=0), default=0.8, show_default=True,
              help="Temperature; 0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=40, show_default=True, help="0: off.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True)
@click.option("--min-p", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--repeat-penalty", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed (default: a fresh one each run).")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads (default: physical cores).")
@click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=0), default=0,
              help="Context size in tokens (default: 4096 or the model's maximum if smaller).")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=512, show_default=True,
              help="Prompt tokens processed per batch.")
@click.option("--cache-type", type=click.Choice(["f16", "f32"]), default="f16", show_default=True,
              help="KV cache element type.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template as one user message.")
@CPU_TIER_OPTION
@with_options(GPU_OPTIONS)
@friendly_errors
def run(model_path: str, prompt: str, max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float,
        repeat_penalty: float, seed: int | None, threads: int | None, n_ctx: int, batch_size: int, cache_type: str,
        chat: bool, cpu_tier: str | None, n_gpu_layers: int, main_gpu: int) -> None:
    """Generate text from a prompt, streamed to stdout; timings go to stderr."""
    import time

    use_cpu_tier(cpu_tier)
    from ..decode.generation import generate
    from ..loader import load_model
    from ..model.model import settle

    model = load_model(model_path, n_ctx=n_ctx, n_threads=threads, kv_type=cache_type, batch_size=batch_size,
                       n_gpu_layers=n_gpu_layers, main_gpu=main_gpu)
    for line in model.gpu.lines():
        click.echo(line, err=True)
    settle()
    tokens = model.chat_tokens([{"role": "user", "content": prompt}]) if chat else model.tokenize(prompt)
    if not chat:
        click.echo(prompt, nl=False)
    started = time.perf_counter()
    first_token_at, n_generated = None, 0
    end_of_turn = model.chat_template.end_of_turn if chat else None  # the template's markup ends the reply
    steps = generate(model, tokens, max_tokens=max_tokens, temperature=temperature, seed=seed, top_k=top_k,
                     top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, stop=[end_of_turn] if end_of_turn else [])
    try:
        for step in steps:
            if first_token_at is None:
                first_token_at = time.perf_counter()
            n_generated += 1
            click.echo(step.text, nl=False)
            sys.stdout.flush()
    finally:
        click.echo()  # the text so far ends its line, before the timings or an error (NaN logits, Ctrl+C)
    ended = time.perf_counter()
    prefill_s = (first_token_at or ended) - started
    decode_s = ended - (first_token_at or ended)
    click.echo(f"prompt: {len(tokens)} tokens in {prefill_s:.2f} s ({len(tokens) / max(prefill_s, 1e-9):.1f} tok/s) | "
               f"generated: {n_generated} tokens, {max(n_generated - 1, 0) / max(decode_s, 1e-9):.1f} tok/s | "
               f"load {model.load_time_s:.2f} s, {model.n_threads} threads", err=True)


# --- serve, and the archive's own command line -------------------------------------------------------------

@main.command()
@click.option("-m", "--model", "model_paths", multiple=True, type=click.Path(dir_okay=False),
              help="GGUF model file (repeatable: several models, each named after its file).")
@with_options(SERVE_OPTIONS)
@click.pass_context
@friendly_errors
def serve(ctx: click.Context, model_paths: tuple[str, ...], config_path: str | None, **options: Any) -> None:
    """Serve an OpenAI-compatible API and a chat UI (http://HOST:PORT/): one model, or several (-m repeated, or
    --config), picked by each request's "model"."""
    config, specs = given_models(config_path, model_paths)
    if not specs:
        raise click.UsageError("give a model (-m FILE) or a config file (--config FILE)")
    start_server(ctx, specs, config, **options)


@click.command(cls=FriendlyCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", "model_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Serve this GGUF file instead of the bundled models (repeatable).")
@with_options(SERVE_OPTIONS)
@click.option("--verify", is_flag=True, help="Re-hash every bundled model against the manifest; say OK or what is "
                                             "wrong, then exit.")
@click.option("--version", is_flag=True, help="Show what this archive holds and was built for, then exit.")
@click.pass_context
@friendly_errors
def archive_command(ctx: click.Context, model_paths: tuple[str, ...], config_path: str | None, verify: bool,
                    version: bool, **options: Any) -> None:
    """Serve the bundled models: an OpenAI-compatible API and a chat UI at http://HOST:PORT/.

    Default arguments baked in at build time come first; the ones given here override them."""
    from ..archive.launcher import verify as verify_bundle
    from ..archive.launcher import version_line
    from ..server.config_file import ModelSpec

    bundle = ctx.obj
    if version:
        click.echo(version_line(bundle))
    elif verify:
        sys.exit(0 if verify_bundle(bundle, say=click.echo) else 1)
    else:
        config, specs = given_models(config_path, model_paths)
        if not specs:  # the archive's own, each with the settings it was built with
            specs = [ModelSpec(m.source, m.alias, **m.settings) for m in bundle.models]
        start_server(ctx, specs, config, **options)


def archive_main() -> None:
    """The archive's entry point (shiv's bootstrap calls it): its command line, baked-in arguments shown in
    --help. `sys.argv` already holds them merged with the user's (`llamapyz/archive/launcher.py`)."""
    bundle = this_bundle()
    baked = [a for a in bundle.args if a != "..."]
    archive_command.epilog = f"Baked in at build time: {' '.join(baked) or '(nothing)'}"
    archive_command(obj=bundle)


@friendly_errors
def this_bundle() -> Any:
    """The archive this process runs from (`llamapyz.archive.launcher.Bundle`), opened once for the command line."""
    from ..archive.launcher import BundleError, open_bundle

    try:
        return open_bundle(sys.argv[0])
    except BundleError as exc:
        raise LlamapyzError(str(exc), hint=exc.hint) from None


if __name__ == "__main__":
    main()
