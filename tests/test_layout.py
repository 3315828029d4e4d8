"""What a target's site-packages/ gathers (llamapyz/bundler/layout.py's `gather`, with llamapyz/bundler/builder.py's
roots), on small folders and on our own webui/: no wheels, no model, no archive."""

from __future__ import annotations

from pathlib import Path

from llamapyz.bundler import builder as build
from llamapyz.bundler import layout
from llamapyz.bundler.platforms import native
from llamapyz.server.state import load_webui

REPO = Path(__file__).resolve().parents[1]
PAGE = ["index.html", "app.js", "style.css", "vendor/katex/LICENSE", "vendor/katex/fonts/KaTeX_Main-Regular.woff2"]
NOT_PAGE = ["README.md", "vendor/README.md", "vendor/refresh.sh", "doc/x.png", "doc/README.md"]


def test_the_webui_root_keeps_the_page_and_its_licenses_not_the_folders_docs_and_scripts(tmp_path):
    for relative in PAGE + NOT_PAGE:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(relative.encode())
    tree = layout.gather([build.webui_root(tmp_path)], with_bytecode=False, hasher=layout.Hasher())
    assert sorted(tree) == sorted("webui/" + relative for relative in PAGE)


def test_an_archive_carries_what_the_server_serves_of_our_webui_and_each_vendored_librarys_license(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "staging").mkdir()
    target = native()
    tree = build.target_trees([target], {target.name: tmp_path / "site"}, tmp_path / "staging", None)[target.name]
    carried = {path.removeprefix("webui/") for path in tree if path.startswith("webui/")}
    assert {"index.html", "app.js", "vendor/katex/LICENSE"} <= carried
    assert any(path.endswith(".woff2") for path in carried)
    assert not carried & {"README.md", "vendor/README.md", "vendor/refresh.sh"}
    licenses = {path for path in carried if Path(path).name.startswith("LICENSE")}
    libraries = {library.name for library in (REPO / "webui" / "vendor").iterdir() if library.is_dir()}
    assert {Path(path).parent.name for path in licenses if path.startswith("vendor/")} == libraries
    assert carried - licenses == set(load_webui(REPO / "webui"))
