"""The chat page's main states, in a real browser (Debian's chromium through Playwright) against the tiny synthetic
model's server: each passes an axe-core audit (vendored in tests/data/vendor/) with no serious or critical
violation, in the light and the dark theme, on a desktop and a phone; and each is saved as a screenshot
(build/webui-screenshots/, or $LLAMAPYZ_SCREENSHOTS) for a person to look at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import FAKE_STREAM, chat_page, stored

pytestmark = pytest.mark.slow

AXE = Path(__file__).parent / "data" / "vendor" / "axe.min.js"
SCREENSHOTS = Path(os.environ.get("LLAMAPYZ_SCREENSHOTS", Path(__file__).parents[1] / "build" / "webui-screenshots"))
PHONE = {"width": 390, "height": 844}

REPLY = r"""Both find a value in a list; **binary search** needs it sorted.

| | linear | binary |
|---|---|---|
| steps, worst case | $n$ | $\lceil \log_2 (n + 1) \rceil$ |
| needs sorted input | no | yes |

```python
def binary_search(items, target):
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo
```

For a million items that is at most $\lceil \log_2 10^6 \rceil = 20$ comparisons:
1. halve the range,
2. keep the half that can hold the target."""

CONVERSATION = {
    "id": "demo", "title": "Binary vs linear search", "created": 10, "updated": 10,
    "systemPrompt": "You are a patient computer science tutor.",
    "messages": [
        {"id": "u1", "parent": None, "role": "user", "content": "Compare binary and linear search."},
        {"id": "a1", "parent": "u1", "role": "assistant", "content": "Linear search looks at each item in turn.",
         "stats": "9 tokens \u00b7 51.0 tokens/s"},
        {"id": "a2", "parent": "u1", "role": "assistant", "content": REPLY, "contextTokens": 212,
         "stats": "196 tokens \u00b7 48.3 tokens/s \u00b7 prompt 24 new + 0 cached"},
    ],
    "leaf": "a2",
}
OTHERS = [{"id": f"c{i}", "title": title, "created": i + 1, "updated": i + 1, "messages": []}
          for i, title in enumerate(["Haiku about autumn", "Explain RoPE scaling", "Plan a 3-day trip"])]


@pytest.fixture
def page(browser, tiny_page_server):
    with chat_page(browser, tiny_page_server.url, "tiny-llama") as page:
        page.set_default_timeout(5_000)
        stored(page, [CONVERSATION, *OTHERS], "demo")
        page.wait_for_selector(".msg.assistant .katex")
        page.wait_for_function("document.querySelector('#context-use').textContent.includes('256')")
        yield page


def assert_accessible(page) -> None:
    """No serious or critical axe-core violation on the page as it is (each found is named with its elements)."""
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    found = [f"{v['id']} ({v['impact']}): {v['help']}: " +
             "; ".join(f"{n['target']} {n['failureSummary']}" for n in v["nodes"][:4])
             for v in violations if v["impact"] in ("serious", "critical")]
    assert not found, "\n".join(found)


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(250)  # transitions end
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def test_desktop_light_and_dark(page):
    page.set_viewport_size({"width": 1200, "height": 900})  # the whole conversation: README.md's screenshot
    page.evaluate("localStorage.setItem('llamapyz.theme', 'light')")
    page.reload()
    page.wait_for_selector(".msg.assistant .katex")
    shoot(page, "desktop-light")
    assert_accessible(page)
    page.click("#theme")  # light -> dark
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    shoot(page, "desktop-dark")
    assert_accessible(page)


def test_settings_dialog(page):
    page.click("#open-settings")
    page.click(".shortcuts summary")
    shoot(page, "settings")
    assert_accessible(page)


def test_waiting_for_a_reply_and_editing(page):
    page.evaluate(FAKE_STREAM)
    page.fill("#input", "And interpolation search?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant .waiting")
    shoot(page, "waiting")
    assert_accessible(page)
    page.evaluate("window.fakeReply.send('Interpolation search guesses'); window.fakeReply.end()")
    page.wait_for_selector("#send:not([hidden])")
    page.locator(".msg.user .edit").first.click()
    shoot(page, "editing")
    assert_accessible(page)


def test_empty_chat(page):
    page.click("#new-chat")
    shoot(page, "empty")
    assert_accessible(page)


def test_phone(page):
    page.set_viewport_size(PHONE)
    shoot(page, "phone")
    assert_accessible(page)
    page.click("#toggle-sidebar")
    shoot(page, "phone-sidebar")
    assert_accessible(page)
