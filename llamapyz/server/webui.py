"""Which files of `webui/` are the chat page: what the server serves (llamapyz/server/state.py) and what an
archive carries (llamapyz/bundler/builder.py). A module of its own so that the bundler reads it without the server."""

from __future__ import annotations

from pathlib import PurePath

# The kinds of file the server serves, with their media types: fixed here, not guessed by `mimetypes`, which on
# Windows reads the registry (where .js can be text/plain, and a browser refuses an ES module served so).
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".json": "application/json",
    ".woff2": "font/woff2",
}


def page_file(relative: PurePath) -> bool:
    """Whether the file at `relative` (its path under webui/) belongs to the page: one of the kinds the server
    serves, or a license (`LICENSE*`: the vendored libraries' ship with them); never what is under a doc/
    folder (the README's screenshots). Anything else (READMEs, vendor/refresh.sh) is the folder's, not the
    page's."""
    if "doc" in relative.parts[:-1]:
        return False
    return relative.suffix in MEDIA_TYPES or relative.name.startswith("LICENSE")
