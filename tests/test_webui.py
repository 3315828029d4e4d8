"""The web chat UI in a real browser (Debian's chromium through Playwright) against `llamapyz serve` with the
real SmolLM2: send, watch the reply stream in, stop, regenerate, edit and resend, reload and find the
conversation, export and import, and model output that contains HTML stays text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser import chat_page

pytestmark = [pytest.mark.slow, pytest.mark.real_model]



@pytest.fixture
def page(browser, smollm2_server):
    with chat_page(browser, smollm2_server.url, "SmolLM2") as page:
        yield page


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def reply_text(page) -> str:
    return page.locator(".msg.assistant .msg-body").last.inner_text()


def test_chat_streams_stops_regenerates_and_persists(page):
    send(page, "Tell me a long story about a dragon.")
    # streaming: text shows up while the Stop button is still there
    page.wait_for_function("""() => {
        const body = [...document.querySelectorAll('.msg.assistant .msg-body')].pop();
        return body && body.textContent.length > 20 && !document.querySelector('#stop').hidden;
    }""", timeout=60_000)
    page.click("#stop")
    page.wait_for_selector("#send:not([hidden])")
    stopped = reply_text(page)
    assert stopped and "stopped" in page.locator(".msg.assistant .stats").last.inner_text()

    page.click(".msg.assistant .regenerate")
    page.wait_for_function("""() => {
        const stats = [...document.querySelectorAll('.msg.assistant .stats')].pop();
        return stats && stats.textContent.includes('tokens/s') && !stats.textContent.includes('stopped');
    }""", timeout=120_000)
    assert page.locator(".msg.assistant").count() == 1  # the regenerated reply replaced the stopped one
    assert reply_text(page).strip()

    page.reload()
    page.wait_for_selector(".conv-item")
    assert "Tell me a long story" in page.locator(".conv-item.active").inner_text()
    assert page.locator(".msg.user .msg-body").first.inner_text() == "Tell me a long story about a dragon."
    assert page.locator(".msg.assistant").count() == 1


def test_edit_and_resend_and_settings_persist(page):
    page.click("#new-chat")
    page.click("#open-settings")
    page.fill("#max-tokens", "12")
    page.fill("#temperature", "0")
    page.click("#close-settings")
    send(page, "What is 2 + 2?")
    page.wait_for_selector(".msg.assistant .stats", timeout=60_000)
    page.click(".msg.user .edit")
    page.fill(".edit-box", "What is 3 + 3?")
    page.click(".edit-send")
    page.wait_for_selector(".msg.assistant .stats", timeout=60_000)
    assert page.locator(".msg.user").count() == 1
    assert page.locator(".msg.user .msg-body").inner_text() == "What is 3 + 3?"
    page.reload()
    page.click("#open-settings")
    assert page.input_value("#max-tokens") == "12" and page.input_value("#temperature") == "0"
    page.click("#close-settings")


def test_model_output_with_html_stays_text(page):
    # the model will not write this on demand, so the server's stream is replayed with a hostile reply
    hostile = ('Look: <script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2"> '
               "[x](javascript:alert(1))\n```html\n<script>window.pwned = 3</script>\n```")
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}] + \
             [{"choices": [{"index": 0, "delta": {"content": hostile[i:i + 7]}}]} for i in range(0, len(hostile), 7)]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, body=body,
                                                                     content_type="text/event-stream"))
    page.click("#new-chat")
    send(page, "hello")
    page.wait_for_selector(".msg.assistant .stats")
    assert page.evaluate("window.pwned") is None
    reply = page.locator(".msg.assistant .msg-body").last
    assert reply.locator("script, img").count() == 0 and reply.locator("a").count() == 0
    assert "<script>window.pwned = 1</script>" in reply.inner_text()
    assert reply.locator(".code-block code").inner_text() == "<script>window.pwned = 3</script>"


def test_server_errors_are_shown(page):
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=400, content_type="application/json",
        body=json.dumps({"error": {"message": "the prompt has 5000 tokens, which does not fit", "type":
                                   "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})))
    page.click("#new-chat")
    send(page, "hello")
    error = page.wait_for_selector(".msg.error")
    assert "5000 tokens" in error.inner_text()


def test_export_and_import(page, tmp_path):
    page.click("#new-chat")
    page.click("#open-settings")
    page.fill("#max-tokens", "4")
    page.click("#close-settings")
    send(page, "Hi there")
    page.wait_for_selector(".msg.assistant .stats", timeout=60_000)
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert any(c["messages"][0]["content"] == "Hi there" for c in exported["conversations"])
    # import into a fresh browser profile: the conversation comes back
    exported["conversations"] = [c for c in exported["conversations"] if c["messages"][0]["content"] == "Hi there"]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported))
    page.evaluate("localStorage.clear()")
    page.reload()
    page.set_input_files("#import-file", str(path))
    page.wait_for_selector(".conv-item")
    assert page.locator(".conv-item").count() == 1
    assert page.locator(".msg.user .msg-body").inner_text() == "Hi there"


def test_phone_layout(browser, smollm2_server):
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    page = context.new_page()
    page.goto(smollm2_server.url + "/")
    sidebar = page.locator("#sidebar")
    page.wait_for_timeout(300)
    assert sidebar.bounding_box()["x"] < -100  # folded away
    page.click("#toggle-sidebar")
    page.wait_for_timeout(400)
    assert sidebar.bounding_box()["x"] == 0
    composer = page.locator("#composer").bounding_box()
    assert composer["x"] >= 0 and composer["x"] + composer["width"] <= 390
    context.close()
