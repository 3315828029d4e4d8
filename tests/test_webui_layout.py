"""The chat page's layout fixes from issue 17, in a real browser (Debian's chromium through Playwright) against the
tiny synthetic model's server: on a phone the sidebar closes every way a user tries and never covers ☰, the
closed sidebar leaves no shadow strip, the message box's placeholder fits; editing a message opens a roomy
editor showing its start."""

from __future__ import annotations

import json

import pytest

from tests.browser import chat_page

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1200, "height": 800}
LONG = "\n".join(f"line {i} of a long message that the user wants to fix" for i in range(60))
CONVERSATIONS = [
    {
        "id": "a",
        "title": "First chat",
        "created": 1,
        "messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Sure."}],
    },
    {"id": "b", "title": "Second chat", "created": 2, "messages": [{"role": "user", "content": "hi"}]},
]


@pytest.fixture
def page(browser, tiny_page_server):
    """The chat page with two stored conversations, the first (with a long user message) open."""
    with chat_page(browser, tiny_page_server.url, "tiny-llama") as page:
        page.set_default_timeout(5_000)
        page.evaluate(f"""() => {{
            localStorage.setItem('llamapyz.conversations', {json.dumps(json.dumps(CONVERSATIONS))});
            localStorage.setItem('llamapyz.current', 'a');
        }}""")
        page.reload()
        page.wait_for_selector(".msg.user")
        yield page


def sidebar_open(page) -> bool:
    """Whether the sidebar shows, once its slide has ended."""
    page.wait_for_timeout(300)
    box = page.locator("#sidebar").bounding_box()
    visible = page.evaluate("getComputedStyle(document.querySelector('#sidebar')).visibility") == "visible"
    return visible and box is not None and box["x"] + box["width"] > 0


def open_sidebar(page) -> None:
    page.click("#toggle-sidebar")
    assert sidebar_open(page)


def test_phone_sidebar_closes_every_way(page):
    page.set_viewport_size(PHONE)
    assert not sidebar_open(page)

    open_sidebar(page)
    page.mouse.click(370, 500)  # a tap beside it
    assert not sidebar_open(page)

    open_sidebar(page)
    page.keyboard.press("Escape")
    assert not sidebar_open(page)

    open_sidebar(page)
    page.click("#toggle-sidebar")  # ☰ again: not covered by the sidebar (a click on a covered one fails)
    assert not sidebar_open(page)

    open_sidebar(page)
    page.click(".conv-item:has-text('Second chat')")
    assert not sidebar_open(page)
    assert page.locator(".msg.user .msg-body").inner_text() == "hi"

    open_sidebar(page)
    page.click("#new-chat")
    assert not sidebar_open(page)
    assert page.locator(".msg").count() == 0


def test_desktop_sidebar_unchanged(page):
    page.set_viewport_size(DESKTOP)
    assert page.locator("#toggle-sidebar").is_hidden()
    box = page.locator("#sidebar").bounding_box()
    assert box["x"] == 0 and box["width"] == 260
    main = page.locator("#main").bounding_box()
    assert main["x"] >= box["x"] + box["width"] - 1  # beside the sidebar, not under it
    page.click(".conv-item:has-text('Second chat')")
    page.click("#new-chat")
    page.keyboard.press("Escape")
    assert page.locator("#sidebar").bounding_box() == box
    assert page.locator("#sidebar-backdrop").is_hidden()


def test_closed_phone_sidebar_leaves_no_shadow(page):
    page.set_viewport_size(PHONE)
    for _ in range(2):  # as loaded, and after opening and closing it
        page.wait_for_timeout(300)
        style = page.evaluate("""() => {
            const s = getComputedStyle(document.querySelector('#sidebar'));
            return {visibility: s.visibility, boxShadow: s.boxShadow};
        }""")
        box = page.locator("#sidebar").bounding_box()
        assert style["visibility"] == "hidden" or box["x"] + box["width"] <= 0
        assert style["boxShadow"] == "none"
        open_sidebar(page)
        page.keyboard.press("Escape")


def placeholder_fits(page) -> bool:
    """Whether the message box's placeholder fits on one line of the box."""
    return page.evaluate("""() => {
        const input = document.querySelector('#input');
        const s = getComputedStyle(input);
        const context = document.createElement('canvas').getContext('2d');
        context.font = s.font;
        const room = input.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
        return context.measureText(input.placeholder).width <= room;
    }""")


def test_placeholder_fits_on_a_phone(page):
    page.set_viewport_size(PHONE)
    # the page follows the width's change event, which may come a frame after the resize
    page.wait_for_function("!document.querySelector('#input').placeholder.includes('Shift')", timeout=2_000)
    assert placeholder_fits(page), page.get_attribute("#input", "placeholder")
    page.set_viewport_size(DESKTOP)
    page.wait_for_function("document.querySelector('#input').placeholder.includes('Shift')", timeout=2_000)
    assert placeholder_fits(page)


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_editor_is_roomy_and_shows_its_start(page, viewport):
    page.set_viewport_size(viewport)
    bubble = page.locator(".msg.user .msg-body").bounding_box()
    page.click(".msg.user .edit")
    editor = page.locator(".edit-box")
    box = editor.bounding_box()
    assert box["width"] >= bubble["width"] - 1
    row = page.locator("#messages").evaluate("""el => {
        const s = getComputedStyle(el);
        return el.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
    }""")
    assert box["width"] >= 0.9 * row  # the whole row, not a field inside the bubble
    geometry = editor.evaluate("""el => ({scrollTop: el.scrollTop, scrollHeight: el.scrollHeight,
        clientHeight: el.clientHeight, caret: el.selectionStart, focused: document.activeElement === el})""")
    assert geometry["scrollTop"] == 0 and geometry["caret"] == 0 and geometry["focused"]
    assert geometry["clientHeight"] >= 0.4 * viewport["height"]  # grown with the long text, up to its limit
    messages = page.locator("#messages").bounding_box()
    assert messages["y"] <= box["y"] < messages["y"] + messages["height"]  # its top in view
    assert editor.input_value() == LONG
