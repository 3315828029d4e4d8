"""Which files of `webui/` are the chat page: what the server serves (runtime/server/state.py) and what an
archive carries (bundler/build.py). A module of its own so that the bundler reads it without the server."""

from __future__ import annotations

from pathlib import PurePath

SERVED_SUFFIXES = (".html", ".css", ".js", ".svg", ".ico", ".png", ".json", ".woff2")


def page_file(relative: PurePath) -> bool:
    """Whether the file at `relative` (its path under webui/) belongs to the page: one of the kinds the server
    serves, or a license (`LICENSE*`: the vendored libraries' ship with them); never what is under a doc/
    folder (the README's screenshots). Anything else (READMEs, vendor/refresh.sh) is the folder's, not the
    page's."""
    if "doc" in relative.parts[:-1]:
        return False
    return relative.suffix in SERVED_SUFFIXES or relative.name.startswith("LICENSE")
