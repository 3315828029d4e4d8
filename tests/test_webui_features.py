"""The chat page's features from issue 17, in a real browser (Debian's chromium through Playwright) against the
tiny synthetic model's server, its replies mostly replaced by a stream the test controls (tests/browser.py's
FAKE_STREAM): edits and regenerations as branches, per-message copy and delete, renaming, searching and
deleting conversations, a system prompt per conversation, the advanced samplers, context use, the theme
switch, the favicon, the keyboard shortcuts and the scroll-to-bottom button."""

from __future__ import annotations

import json
import re

import pytest

from tests.browser import FAKE_STREAM, chat_page, stored

pytestmark = pytest.mark.slow


@pytest.fixture
def page(browser, tiny_page_server):
    with chat_page(browser, tiny_page_server.url, "tiny-llama") as page:
        page.set_default_timeout(10_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() of a delete
        yield page


def fake(page) -> None:
    page.evaluate(FAKE_STREAM)


def exchange(page, text: str, answer: str) -> None:
    """Sends text and lets the fake stream answer it."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_selector("#stop:not([hidden])")
    page.evaluate("(answer) => { window.fakeReply.send(answer); window.fakeReply.end(); }", answer)
    page.wait_for_selector("#send:not([hidden])")


def answer(page, text: str) -> None:
    page.wait_for_selector("#stop:not([hidden])")
    page.evaluate("(text) => { window.fakeReply.send(text); window.fakeReply.end(); }", text)
    page.wait_for_selector("#send:not([hidden])")


def shown(page) -> list[str]:
    """The messages shown, as role: text."""
    return page.evaluate("""[...document.querySelectorAll('.msg')].map((el) => (el.classList.contains('user') ?
        'user' : 'assistant') + ': ' + el.querySelector('.msg-body').textContent.trim())""")


def last_request(page) -> dict:
    return page.evaluate("window.fakeReply.requests.at(-1)")


def test_editing_any_message_adds_a_branch_and_the_old_one_stays(page):
    fake(page)
    exchange(page, "first", "one")
    exchange(page, "second", "two")
    page.locator(".msg.user .edit").first.click()
    page.fill(".edit-box", "first, edited")
    page.click(".edit-send")
    answer(page, "three")
    assert shown(page) == ["user: first, edited", "assistant: three"]
    assert last_request(page)["messages"] == [{"role": "user", "content": "first, edited"}]
    assert page.locator(".msg.user .branch-position").inner_text() == "2/2"

    page.click(".msg.user .branch-previous")
    assert shown(page) == ["user: first", "assistant: one", "user: second", "assistant: two"]
    assert page.locator(".msg.user .branch-position").first.inner_text() == "1/2"
    page.reload()  # the tree and the branch shown are kept
    page.wait_for_selector(".msg")
    assert shown(page) == ["user: first", "assistant: one", "user: second", "assistant: two"]
    page.locator(".msg.user .branch-next").first.click()
    assert shown(page) == ["user: first, edited", "assistant: three"]


def test_regenerating_any_reply_adds_a_version_of_it(page):
    fake(page)
    exchange(page, "first", "one")
    exchange(page, "second", "two")
    page.locator(".msg.assistant .regenerate").first.click()
    answer(page, "uno")
    assert shown(page) == ["user: first", "assistant: uno"]
    assert last_request(page)["messages"] == [{"role": "user", "content": "first"}]
    assert page.locator(".msg.assistant .branch-position").inner_text() == "2/2"
    page.click(".msg.assistant .branch-previous")
    assert shown(page) == ["user: first", "assistant: one", "user: second", "assistant: two"]


def test_copy_gives_the_messages_own_text_and_delete_takes_what_follows(page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    fake(page)
    exchange(page, "first", "**bold** and `code`")
    exchange(page, "second", "two")
    page.locator(".msg.assistant .copy").first.click()
    assert page.evaluate("navigator.clipboard.readText()") == "**bold** and `code`"  # the Markdown, not the HTML
    assert page.locator(".msg.assistant .copy").first.inner_text() == "Copied"

    questions = []
    page.on("dialog", lambda dialog: questions.append(dialog.message))
    page.locator(".msg.user .delete").nth(1).click()
    assert shown(page) == ["user: first", "assistant: bold and code"]
    assert questions[-1] == "Delete this message and the 1 after it?"

    page.locator(".msg.assistant .regenerate").click()
    answer(page, "again")
    page.locator(".msg.assistant .delete").click()  # the other version shows in its place
    assert shown(page) == ["user: first", "assistant: bold and code"]
    page.locator(".msg.user .delete").click()
    assert page.locator(".msg").count() == 0 and page.locator(".empty").is_visible()


CONVERSATIONS = [
    {"id": "a", "title": "Trip plans", "created": 3, "updated": 3,
     "messages": [{"role": "user", "content": "Three days in Tokyo?"}, {"role": "assistant", "content": "Sure."}]},
    {"id": "b", "title": "Haiku", "created": 2, "updated": 2, "messages": [{"role": "user", "content": "autumn"}]},
    {"id": "c", "title": "Rust lifetimes", "created": 1, "updated": 1, "messages": []},
]


def titles(page) -> list[str]:
    return page.locator(".conv-title").all_inner_texts()


def test_conversations_are_renamed_searched_and_deleted(page):
    stored(page, CONVERSATIONS, "a")
    assert titles(page) == ["Trip plans", "Haiku", "Rust lifetimes"]  # newest first; version 1's lists read
    assert shown(page) == ["user: Three days in Tokyo?", "assistant: Sure."]

    page.click(".conv-item.active .conv-rename")
    page.fill(".conv-rename-box", "Tokyo in three days")
    page.press(".conv-rename-box", "Enter")
    page.locator(".conv-item", has_text="Haiku").locator(".conv-rename").click()
    page.fill(".conv-rename-box", "never saved")
    page.press(".conv-rename-box", "Escape")
    page.reload()
    page.wait_for_selector(".conv-item")
    assert titles(page) == ["Tokyo in three days", "Haiku", "Rust lifetimes"]

    page.fill("#search", "tokyo")  # the title, and a message of it
    assert titles(page) == ["Tokyo in three days"]
    page.fill("#search", "AUTUMN")  # only in a message, any case
    assert titles(page) == ["Haiku"]
    page.fill("#search", "nowhere")
    assert titles(page) == [] and page.locator("#no-match").is_visible()
    page.fill("#search", "")

    page.locator(".conv-item", has_text="Rust").locator(".conv-delete").click()
    assert titles(page) == ["Tokyo in three days", "Haiku"]
    page.reload()
    page.wait_for_selector(".conv-item")
    assert titles(page) == ["Tokyo in three days", "Haiku"]


def test_each_conversation_has_its_own_system_prompt(page):
    fake(page)
    page.click("#open-settings")
    page.fill("#system-prompt", "Be brief.")
    page.click("#close-settings")
    page.click("#new-chat")
    assert page.locator("#system-summary").inner_text() == "Be brief."
    page.click("#system-box summary")
    page.fill("#conversation-system", "Answer in French.")
    exchange(page, "hello", "bonjour")
    assert last_request(page)["messages"][0] == {"role": "system", "content": "Answer in French."}

    page.click("#new-chat")  # a new chat starts with the default again
    assert page.input_value("#conversation-system") == "Be brief."
    exchange(page, "hi", "hi")
    assert last_request(page)["messages"][0] == {"role": "system", "content": "Be brief."}
    page.reload()
    page.click(".conv-item:has-text('hello')")
    assert page.input_value("#conversation-system") == "Answer in French."


def test_advanced_samplers_default_to_the_servers_and_only_set_ones_are_sent(page):
    fake(page)
    page.click("#open-settings")
    placeholders = {s: page.get_attribute(f"#{s}", "placeholder")
                    for s in ("top-k", "min-p", "repeat-penalty", "presence-penalty", "seed", "max-tokens")}
    assert placeholders == {"top-k": "default 40", "min-p": "default 0.05", "repeat-penalty": "default 1",
                            "presence-penalty": "default 0", "seed": "random", "max-tokens": "no limit"}
    page.fill("#top-k", "5")
    page.fill("#seed", "42")
    page.fill("#repeat-penalty", "1.1")
    page.fill("#min-p", "2")  # above its maximum: Done refuses it
    page.click("#close-settings")
    assert page.locator("#settings").is_visible()
    page.fill("#min-p", "")
    page.fill("#repeat-penalty", "0")  # must be above 0
    page.click("#close-settings")
    assert page.locator("#settings").is_visible()
    page.fill("#repeat-penalty", "1.1")
    page.click("#close-settings")
    assert not page.locator("#settings").is_visible()
    exchange(page, "hello", "hi")
    request = last_request(page)
    sampling = {k: v for k, v in request.items() if k not in ("messages", "stream", "stream_options")}
    assert sampling == {"top_k": 5, "seed": 42, "repeat_penalty": 1.1}


def test_context_use_is_the_servers_count(page):
    requests = []
    page.on("request", lambda r: requests.append(r) if "chat/completions" in r.url else None)
    page.click("#open-settings")
    page.fill("#max-tokens", "5")
    page.click("#close-settings")
    page.fill("#input", "hello there")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant .stats")
    events = [json.loads(line[6:]) for line in requests[-1].response().text().splitlines()
              if line.startswith("data: {")]
    usage = next(e["usage"] for e in events if e.get("usage"))
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    assert page.locator("#context-use").inner_text() == f"{used} / 256"
    page.click("#new-chat")
    assert page.locator("#context-use").inner_text() == "0 / 256"


def test_theme_switch_cycles_and_is_kept(page):
    background = "getComputedStyle(document.body).backgroundColor"
    # in "auto" the page follows the system's change event, which may come a frame after the change
    in_effect = "(theme) => document.documentElement.dataset.theme === theme"
    page.emulate_media(color_scheme="light")
    page.wait_for_function(in_effect, arg="light", timeout=2_000)
    assert page.get_attribute("#theme", "aria-label").startswith("Theme: as the system's")
    auto_light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    page.wait_for_function(in_effect, arg="dark", timeout=2_000)
    auto_dark = page.evaluate(background)
    assert auto_light != auto_dark
    page.click("#theme")
    assert page.get_attribute("#theme", "aria-label").startswith("Theme: light")
    assert page.evaluate(background) == auto_light  # the system is dark, the page light
    page.click("#theme")
    page.emulate_media(color_scheme="light")
    assert page.evaluate(background) == auto_dark
    page.reload()
    page.wait_for_selector("#theme[aria-label]")
    assert page.evaluate(background) == auto_dark
    assert page.get_attribute("#theme", "aria-label").startswith("Theme: dark")
    page.click("#theme")
    assert page.evaluate(background) == auto_light


def test_favicon_and_title(page, tiny_page_server):
    assert page.title() == "tiny-llama \u00b7 llamapyz"
    href = page.get_attribute("link[rel=icon]", "href")
    response = page.request.get(f"{tiny_page_server.url}/{href}")
    assert response.status == 200 and response.headers["content-type"].startswith("image/svg+xml")
    assert response.text().startswith("<svg")


def test_keyboard_shortcuts(page):
    fake(page)
    exchange(page, "first", "one")
    n = page.locator(".conv-item").count()
    page.click("#model-name")
    page.keyboard.press("Control+Shift+O")  # a new chat, the message box focused
    assert page.locator(".conv-item").count() == n + 1
    assert page.evaluate("document.activeElement.id") == "input"
    page.keyboard.press("Control+K")  # search
    assert page.evaluate("document.activeElement.id") == "search"
    page.keyboard.press("Shift+Escape")  # back to the message box
    assert page.evaluate("document.activeElement.id") == "input"
    page.fill("#input", "tell me more")
    page.press("#input", "Enter")
    page.evaluate("window.fakeReply.send('Once')")
    page.keyboard.press("Escape")  # stops the reply
    page.wait_for_selector("#send:not([hidden])")
    assert page.locator(".msg.assistant .stats").inner_text().endswith("stopped")


def test_scroll_to_bottom_button(page):
    long = [{"role": role, "content": f"message {i}\n\n" + "a line of text\n\n" * 6}
            for i, role in enumerate(["user", "assistant"] * 15)]
    stored(page, [{"id": "long", "title": "Long", "created": 1, "messages": long}], "long")
    page.wait_for_selector(".msg")
    button = page.locator("#scroll-down")
    assert button.is_hidden()  # a conversation opens at its end
    page.locator("#messages").evaluate("el => { el.scrollTop = 0; }")
    button.wait_for(state="visible")

    fake(page)  # a reply streaming in leaves the user where they scrolled to
    page.fill("#input", "more")
    page.press("#input", "Enter")  # sending jumps to the end
    page.locator("#messages").evaluate("el => { el.scrollTop = 100; }")
    page.evaluate("window.fakeReply.send('a long reply\\n\\n'.repeat(30))")
    page.wait_for_function("document.querySelectorAll('.msg').length === 32")
    assert page.locator("#messages").evaluate("el => el.scrollTop") == 100
    button.click()
    page.wait_for_function("""() => { const el = document.querySelector('#messages');
        return el.scrollHeight - el.scrollTop - el.clientHeight < 2; }""")
    button.wait_for(state="hidden")
    page.evaluate("window.fakeReply.send('\\n\\nmore text'.repeat(20)); window.fakeReply.end()")
    page.wait_for_selector("#send:not([hidden])")
    assert re.search(r"more text$", shown(page)[-1])
    assert page.locator("#messages").evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight") < 2


def import_file(page, data) -> None:
    page.set_input_files("#import-file", files=[{"name": "chats.json", "mimeType": "application/json",
                                                  "buffer": json.dumps(data).encode()}])
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('import')")


FULL_STORAGE = """(full) => {
    window.realSetItem ??= Storage.prototype.setItem;
    Storage.prototype.setItem = function (key, value) {
        if (full && key === 'llamapyz.conversations') throw new DOMException('full', 'QuotaExceededError');
        return window.realSetItem.call(this, key, value);
    };
}"""


def test_a_full_storage_is_said_and_the_page_goes_on(page):
    fake(page)
    exchange(page, "kept", "yes")
    page.evaluate(FULL_STORAGE, True)
    exchange(page, "not kept", "no")  # no script error, and Send comes back
    assert shown(page)[-2:] == ["user: not kept", "assistant: no"]
    assert page.inner_text("#status").startswith("not saved: the browser's storage is full")
    page.evaluate(FULL_STORAGE, False)
    exchange(page, "room again", "yes")
    assert page.inner_text("#status") == ""
    page.evaluate(FULL_STORAGE, True)
    import_file(page, {"conversations": [{"title": "Too much", "messages": []}]})
    assert page.inner_text("#status") == "import failed: the browser's storage is full"
    assert titles(page) == ["kept"]  # nothing half imported


def test_importing_malformed_and_version_1_files(page):
    import_file(page, {"llamapyz": 1, "conversations": [
        {"title": {"not": "text"}, "created": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "parts"}]},
            {"role": "assistant", "content": {"an": "object"}}]},
        {"id": "tree", "title": "Tree", "created": 1, "leaf": "d", "messages": [
            {"id": "a", "parent": "b", "role": "assistant", "content": "a root reply"},  # its parent comes later
            {"id": "b", "parent": "a", "role": "user", "content": "B"},
            {"id": "b", "parent": "b", "role": "assistant", "content": "a duplicate id"},
            {"id": "d", "parent": "b", "role": "user", "content": "D"}]},
    ]})
    assert page.inner_text("#status") == "imported 2 conversations"
    assert titles(page) == ["Imported chat", "Tree"]
    assert shown(page) == ["user: parts", "assistant: "]
    page.click(".conv-title:has-text('Tree')")
    assert shown(page) == ["assistant: a root reply", "user: B", "user: D"]
    # a reply that answers nothing has nothing to regenerate; the one after it has
    assert page.locator(".msg.assistant .regenerate").count() == 0


def test_renaming_keeps_its_text_while_a_reply_ends_and_focus_follows_actions(page):
    fake(page)
    exchange(page, "first", "one")
    page.click("#new-chat")
    page.fill("#input", "second")
    page.press("#input", "Enter")
    page.locator(".conv-item", has_text="first").locator(".conv-rename").click()
    page.keyboard.type("Renamed")
    page.evaluate("window.fakeReply.send('two'); window.fakeReply.end()")  # re-renders the list
    page.wait_for_selector("#send:not([hidden])")
    assert page.evaluate("document.activeElement.value") == "Renamed"
    page.keyboard.press("Enter")
    assert titles(page) == ["second", "Renamed"]
    assert page.evaluate("document.activeElement.textContent") == "Renamed"  # the title, not the page

    page.locator(".conv-item", has_text="second").locator(".conv-title").dblclick()
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.textContent") == "second"
    page.keyboard.press("Tab")  # its ✎
    page.keyboard.press("Tab")  # its ×
    page.keyboard.press("Enter")
    assert titles(page) == ["Renamed"]
    assert page.evaluate("document.activeElement.textContent") == "Renamed"
    page.locator(".msg.assistant .delete").click()
    assert page.evaluate("document.activeElement.id") == "input"


def test_another_conversation_opens_at_its_end_with_its_own_system_prompt(page):
    long = [{"role": role, "content": f"message {i}\n\n" + "a line of text\n\n" * 6}
            for i, role in enumerate(["user", "assistant"] * 15)]
    stored(page, [{"id": "one", "title": "One", "created": 2, "messages": long},
                  {"id": "two", "title": "Two", "created": 1, "systemPrompt": "Be terse.", "messages": long}], "one")
    page.wait_for_selector(".msg")
    page.locator("#messages").evaluate("el => { el.scrollTop = 0; }")
    page.locator("#scroll-down").wait_for(state="visible")
    page.click(".conv-title:has-text('Two')")
    assert page.locator("#messages").evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight") < 2
    assert page.locator("#scroll-down").is_hidden()

    page.click("#system-box summary")
    page.click("#conversation-system")
    page.keyboard.press("Control+Shift+O")  # a new chat from within the field: the field shows its prompt
    assert page.input_value("#conversation-system") == ""
    assert page.locator("#system-summary").inner_text() == "none"


def test_importing_while_a_reply_streams_keeps_its_conversation_open(page):
    fake(page)
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    page.evaluate("window.fakeReply.send('Hi')")
    import_file(page, {"conversations": [{"title": "Imported", "messages": [{"role": "user", "content": "x"}]}]})
    assert titles(page) == ["Imported", "hello"]
    answer(page, " there")
    assert shown(page) == ["user: hello", "assistant: Hi there"]
    assert page.locator(".conv-item.active").inner_text().startswith("hello")


def test_sending_after_a_failed_regeneration_goes_on_from_its_parent(page):
    # the first reply regenerated, and that failed: the failure is what shows, beside the old reply's branch
    messages = [{"id": "u1", "parent": None, "role": "user", "content": "first"},
                {"id": "a1", "parent": "u1", "role": "assistant", "content": "one"},
                {"id": "u2", "parent": "a1", "role": "user", "content": "second"},
                {"id": "a2", "parent": "u2", "role": "assistant", "content": "two"},
                {"id": "e", "parent": "u1", "role": "assistant", "content": "", "error": "Error: down"}]
    stored(page, [{"id": "c", "title": "first", "created": 1, "messages": messages, "leaf": "e"}], "c")
    assert shown(page) == ["user: first", "assistant: Error: down"]
    fake(page)
    exchange(page, "again", "ok")
    assert last_request(page)["messages"] == [{"role": "user", "content": "first"},
                                              {"role": "user", "content": "again"}]
    assert shown(page) == ["user: first", "user: again", "assistant: ok"]


def test_escape_in_a_search_clears_it_and_leaves_the_reply_streaming(page):
    fake(page)
    exchange(page, "first", "one")
    page.fill("#input", "second")
    page.press("#input", "Enter")
    page.fill("#search", "first")
    page.press("#search", "Escape")
    assert page.input_value("#search") == ""
    assert page.locator("#stop").is_visible()
    page.press("#search", "Escape")  # an empty search: Escape stops the reply, as anywhere
    page.wait_for_selector("#send:not([hidden])")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """The tiny llama and a tiny qwen2 behind one server."""
    from llamapyz.server.config_file import ModelSpec
    from tests.live_server import ServerThread
    from tests.synth import write_model

    qwen = tmp_path_factory.mktemp("qwen") / "tiny-qwen2.gguf"
    write_model(qwen, "qwen2", "Q4_0", seed=1)
    llama = tmp_path_factory.mktemp("llama") / "tiny-llama.gguf"
    write_model(llama, "llama", "Q8_0")
    models = [ModelSpec(str(llama), "tiny-llama"), ModelSpec(str(qwen), "tiny-qwen2")]
    with ServerThread(None, models=models, n_ctx=256, n_slots=1, sampling={"max_tokens": 4}) as live:
        yield live


def test_with_several_models_the_header_offers_a_choice(browser, tiny_page_server, two_models):
    with chat_page(browser, tiny_page_server.url, "tiny-llama") as page:  # one model: no choice
        assert page.locator("#model-picker").is_hidden() and page.locator("#model-name").is_visible()
    with chat_page(browser, two_models.url, "tiny-llama") as page:
        page.set_default_timeout(30_000)
        picker = page.locator("#model-picker")
        assert picker.is_visible()
        assert picker.locator("option").all_inner_texts() == ["tiny-llama", "tiny-qwen2 (not loaded)"]
        requests = []
        page.on("request", lambda r: requests.append(r.post_data_json) if "chat/completions" in r.url else None)
        picker.select_option("tiny-qwen2")  # chosen: it loads with its first request (the page's GETs load nothing)
        page.wait_for_function("document.title === 'tiny-qwen2 \u00b7 llamapyz'")
        assert two_models.state.pool.models[1].state == "not loaded"
        page.fill("#input", "hello")
        page.press("#input", "Enter")
        stats = page.wait_for_selector(".msg.assistant .stats").inner_text()
        assert requests[-1]["model"] == "tiny-qwen2" and stats.startswith("tiny-qwen2 \u00b7 4 tokens")
        page.reload()  # the choice is kept
        page.wait_for_function("document.querySelector('#model-picker').value === 'tiny-qwen2'")
        page.wait_for_function("document.querySelector('#model-picker option:nth-child(2)').textContent"
                               " === 'tiny-qwen2'")  # loaded by the chat


def test_the_page_works_where_storage_is_blocked(browser, tiny_page_server):
    context = browser.new_context()
    context.add_init_script("Object.defineProperty(window, 'localStorage', "
                            "{get() { throw new DOMException('The operation is insecure.', 'SecurityError'); }})")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(tiny_page_server.url + "/")
    page.wait_for_function("document.querySelector('#model-name').textContent === 'tiny-llama'")
    page.evaluate(FAKE_STREAM)
    exchange(page, "hello", "hi")  # the chat works; nothing can be kept, and the header says so
    assert shown(page) == ["user: hello", "assistant: hi"]
    assert page.locator("#status").inner_text().startswith("not saved")
    context.close()
    assert not errors, errors


def test_shift_escape_in_the_editor_keeps_the_edit(page):
    fake(page)
    exchange(page, "first", "one")
    page.click(".msg.user .edit")
    page.fill(".edit-box", "first, changed")
    page.press(".edit-box", "Shift+Escape")
    assert page.evaluate("document.activeElement.id") == "input"
    assert page.input_value(".edit-box") == "first, changed"


def test_a_reply_stopped_before_its_first_token_is_not_sent_back(page):
    fake(page)
    page.fill("#input", "first")
    page.press("#input", "Enter")
    page.wait_for_selector("#stop:not([hidden])")
    page.click("#stop")
    page.wait_for_selector("#send:not([hidden])")
    exchange(page, "second", "two")
    assert [m["content"] for m in last_request(page)["messages"]] == ["first", "second"]


def test_a_base_model_is_called_one_in_the_header(browser, tmp_path_factory):
    """The registry's gemma3-270m, a base model, was offered for chat without a word (issue 27): /v1/models'
    base_model (no chat template in its file) is said in the picker and in the heading."""
    from llamapyz.server.config_file import ModelSpec
    from tests.live_server import ServerThread
    from tests.synth import write_model

    folder = tmp_path_factory.mktemp("base")
    llama, base = folder / "tiny-llama.gguf", folder / "tiny-base.gguf"
    write_model(llama, "llama", "Q8_0")
    write_model(base, "llama", "Q8_0", chat_template=False)
    models = [ModelSpec(str(llama), "tiny-llama"), ModelSpec(str(base), "tiny-base")]
    with ServerThread(None, models=models, n_ctx=64, n_slots=1) as live, \
            chat_page(browser, live.url, "tiny-llama") as page:
        assert page.locator("#model-picker option").all_inner_texts() == [
            "tiny-llama", "tiny-base (not loaded; base model: completes text, not a chat)"]
    with ServerThread(base, n_ctx=64, n_slots=1) as live, chat_page(browser, live.url, "tiny-base") as page:
        assert page.locator("#model-name").inner_text() == "tiny-base (base model: completes text, not a chat)"
        assert page.title() == "tiny-base \u00b7 llamapyz"
