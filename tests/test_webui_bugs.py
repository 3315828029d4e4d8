"""The chat page's fixes from issue 17, each in a real browser (Debian's chromium through Playwright) against the
tiny synthetic model's server: a waiting indicator until the first token, a Settings dialog whose Escape and
Cancel discard the edits and which never saves an invalid value, the API key notice gone once the key works,
only the sampling settings the user set sent (the server's defaults shown instead), tokens counted the same way
for a finished and a stopped reply."""

from __future__ import annotations

import json
import re

import pytest

from tests.browser import FAKE_STREAM, chat_page
from tests.live_server import ServerThread

pytestmark = pytest.mark.slow

# the server's own defaults, which the page must leave alone unless the user sets something
SERVER_SAMPLING = {"temperature": 0.3, "max_tokens": 8}
API_KEY = "sesame"


@pytest.fixture(scope="module")
def server(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=256, n_slots=1, sampling=SERVER_SAMPLING) as live:
        yield live


@pytest.fixture
def page(browser, server):
    with chat_page(browser, server.url, "tiny-llama") as page:
        page.set_default_timeout(10_000)
        yield page


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def stored_settings(page) -> dict:
    return page.evaluate("JSON.parse(localStorage.getItem('llamapyz.settings') || '{}')")


def test_waiting_indicator_until_the_first_token(page):
    page.evaluate(FAKE_STREAM)
    send(page, "a long prompt")
    # no token yet: the assistant bubble says it is waiting, to eyes and to screen readers
    waiting = page.locator(".msg.assistant .waiting")
    waiting.wait_for(state="visible", timeout=2_000)
    assert page.get_by_role("status").filter(has_text="Waiting for the reply").count() == 1
    assert page.locator(".msg.assistant").get_attribute("aria-busy") == "true"
    page.evaluate("window.fakeReply.send('Hello')")
    page.wait_for_function("document.querySelector('.msg.assistant .msg-body').textContent.trim() === 'Hello'")
    assert waiting.count() == 0  # gone with the first token, while the reply still streams
    assert not page.locator("#stop").is_hidden()
    page.evaluate("window.fakeReply.end()")
    page.wait_for_selector(".msg.assistant .stats")
    assert page.locator(".msg.assistant").get_attribute("aria-busy") is None


def test_escape_and_cancel_discard_edits_and_invalid_values_are_never_saved(page):
    before = stored_settings(page)
    page.click("#open-settings")
    page.fill("#temperature", "-1")
    page.fill("#system-prompt", "edited")
    page.keyboard.press("Escape")
    assert not page.locator("#settings").is_visible()
    assert stored_settings(page) == before  # Escape = Cancel: nothing saved, least of all temperature -1

    page.click("#open-settings")
    assert page.input_value("#temperature") == "" and page.input_value("#system-prompt") == ""
    page.fill("#temperature", "1.5")
    page.click("#cancel-settings")
    assert not page.locator("#settings").is_visible()
    assert stored_settings(page) == before

    page.click("#open-settings")
    page.fill("#temperature", "-1")
    page.click("#close-settings")
    assert page.locator("#settings").is_visible()  # Done refuses an invalid value
    page.fill("#temperature", "0.5")
    page.click("#close-settings")
    assert not page.locator("#settings").is_visible()
    # the dialog's "close" event, which saves, is a task queued after it hides: wait for it
    page.wait_for_function("JSON.parse(localStorage.getItem('llamapyz.settings') || '{}').temperature === 0.5")
    assert stored_settings(page)["temperature"] == 0.5

    # an invalid value stored earlier (by an older page) is dropped on load: the server's default again
    page.evaluate("localStorage.setItem('llamapyz.settings', JSON.stringify({version: 2, temperature: -1, topP: 7}))")
    page.reload()
    page.click("#open-settings")
    assert page.input_value("#temperature") == "" and page.input_value("#top-p") == ""
    page.click("#cancel-settings")


def test_api_key_notice_goes_once_the_key_is_saved(browser, tiny_llama):
    with ServerThread(tiny_llama, n_ctx=256, n_slots=1, api_key=API_KEY) as keyed:
        context = browser.new_context()
        page = context.new_page()
        page.goto(keyed.url + "/")
        status = page.locator("#status")
        page.wait_for_function("document.querySelector('#status').textContent.includes('API key')")
        page.click("#open-settings")
        page.fill("#api-key", API_KEY)
        page.click("#close-settings")
        page.wait_for_function("document.querySelector('#model-name').textContent.includes('tiny-llama')",
                               timeout=5_000)
        assert "API key" not in status.inner_text()
        context.close()


def test_only_the_sampling_settings_the_user_set_are_sent(page):
    bodies = []

    def capture(route):
        bodies.append(route.request.post_data_json)
        route.continue_()

    page.route("**/v1/chat/completions", capture)
    # the server's defaults are the placeholders
    page.click("#open-settings")
    assert "0.3" in page.get_attribute("#temperature", "placeholder")
    assert "0.95" in page.get_attribute("#top-p", "placeholder")
    assert "8" in page.get_attribute("#max-tokens", "placeholder")
    page.click("#cancel-settings")

    send(page, "hello")
    page.wait_for_selector(".msg.assistant .stats")
    assert not {"temperature", "top_p", "max_tokens"} & set(bodies[-1])

    page.click("#open-settings")
    page.fill("#temperature", "0")
    page.click("#close-settings")
    page.click("#new-chat")
    send(page, "hello again")
    page.wait_for_selector(".msg.assistant .stats")
    assert bodies[-1]["temperature"] == 0
    assert not {"top_p", "max_tokens"} & set(bodies[-1])


def test_finished_and_stopped_replies_both_count_tokens(page):
    page.evaluate(FAKE_STREAM)
    page.click("#new-chat")
    send(page, "hello")
    for piece in ["One", " two", " three"]:
        page.evaluate(f"window.fakeReply.send({json.dumps(piece)})")
    page.wait_for_function("document.querySelector('.msg.assistant .msg-body').textContent.trim() === 'One two three'")
    page.click("#stop")
    stats = page.wait_for_selector(".msg.assistant .stats").inner_text()
    assert re.match(r"3 tokens \u00b7 [\d.-]+ tokens/s \u00b7 stopped$", stats), stats
    assert page.evaluate("window.fakeReply.requests[0].stream_options") == {"include_usage": True}

    page.reload()  # the real server again
    page.click("#new-chat")
    send(page, "hello")  # the server's default: 8 tokens
    stats = page.wait_for_selector(".msg.assistant .stats").inner_text()
    assert re.match(r"8 tokens \u00b7 [\d.]+ tokens/s", stats), stats
