"""Debian's chromium through Playwright's Python package (never `playwright install`), for the web UI tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def headless_chromium() -> Iterator:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: .ci/run installs Debian's package (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@contextmanager
def chat_page(browser, url: str, model_name: str) -> Iterator:
    """The chat page at url, loaded once the header names the model; no script error may happen meanwhile."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/")
    page.wait_for_function(f"document.querySelector('#model-name').textContent.includes({model_name!r})")
    yield page
    context.close()
    assert not errors, errors
