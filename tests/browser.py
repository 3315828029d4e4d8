"""Debian's chromium through Playwright's Python package (never `playwright install`), for the web UI tests."""

from __future__ import annotations

import json
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


# window.fetch answers /v1/chat/completions with a stream the test controls: nothing until
# `window.fakeReply.send(text)` delivers a content delta, `window.fakeReply.chunk(data)` any event (usage);
# `window.fakeReply.end()` finishes it; Stop aborts it. `window.fakeReply.requests` holds the request bodies.
FAKE_STREAM = """() => {
    const realFetch = window.fetch;
    const encoder = new TextEncoder();
    const event = (data) => encoder.encode(`data: ${JSON.stringify(data)}\\n\\n`);
    window.fakeReply = { requests: [] };
    window.fetch = (url, options) => {
        if (!String(url).includes('chat/completions')) return realFetch(url, options);
        window.fakeReply.requests.push(JSON.parse(options.body));
        const stream = new ReadableStream({ start(controller) {
            window.fakeReply.send = (text) =>
                controller.enqueue(event({choices: [{index: 0, delta: {content: text}}]}));
            window.fakeReply.chunk = (data) => controller.enqueue(event(data));
            window.fakeReply.end = () => {
                controller.enqueue(encoder.encode('data: [DONE]\\n\\n'));
                controller.close();
            };
            options.signal.addEventListener('abort',
                () => controller.error(new DOMException('The user aborted a request.', 'AbortError')));
        } });
        return Promise.resolve(new Response(stream, {headers: {'Content-Type': 'text/event-stream'}}));
    };
}"""


def stored(page, conversations: list[dict], current: str | None = None) -> None:
    """The page reloaded with these conversations in its localStorage (`current` open), as if made earlier."""
    page.evaluate("""([conversations, current]) => {
        localStorage.setItem('llamapyz.conversations', conversations);
        if (current) localStorage.setItem('llamapyz.current', current);
    }""", [json.dumps(conversations), current])
    page.reload()
    page.wait_for_selector("#conversations")
