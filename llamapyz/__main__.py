"""`llamapyz` (the console script) and `python -m llamapyz`: the command line (`cli.main`), plus a checkout's
`build` command. The builder sits above the command line (it checks an archive's baked-in arguments against
the archive's own command), so the command line does not import it; an archive carries neither."""

from __future__ import annotations

import click

from .cli.main import main


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def build(ctx: click.Context) -> None:
    """Build a self-running .pyz from a model (same as `python build.py`; --help for its options)."""
    from .bundler.builder import main as build_main

    build_main(ctx.args, prog_name="llamapyz build")


if __name__ == "__main__":
    main()
