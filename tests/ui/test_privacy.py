"""Several people on one deployment: an upload is its owner's alone.

Two signed-in users in two Chromium contexts (Playwright, as in ``tests/ui/test_browser.py``),
and two anonymous chats over the socket client (``tests/support/chainlit_client.py``): one
uploads a file holding a fact nothing else contains; the other asks for it and is refused,
and nothing of the file reaches its page or its events (answer, Retrieval step, sources,
welcome page, document filter); the uploader gets the answer with the upload cited. A client
naming in the document filter a source it may not see is refused in one line.

Real `rag ingest` and `rag ui` on Milvus Lite, embedded and answered by the loopback fake.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_files
from tests.support.chainlit_client import ChainlitClient, Turn
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, serve
from tests.ui.test_chat_ui import ChatUI, _env, ingested_ui

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
if CHROMIUM is not None:  # the browser helpers (their module skips itself without Chromium)
    from playwright.sync_api import Page, expect

    from tests.ui.test_browser import (
        USERS,
        answer_with,
        ask,
        browser,
        chat_session,
        open_settings,
        retrieved,
        running_app,
        sign_in,
        source_links,
        wait_for_chat,
    )

    _ = browser  # a fixture, used by name

DOCS = {
    "falcon.txt": "The launch code for Project Falcon is ZX-4471.\n",
    "tallinn.txt": "The wifi password of the Tallinn office is kelp-harbor-93.\n",
}
HERON = "The Heron QX-9 drone flies 42 kilometres on one charge. Its battery takes an hour.\n"
HERON_Q = "How far does the Heron QX-9 drone fly?"
FACT = "42 kilometres"
UPLOAD_SOURCE = r"uploads/[0-9a-f]{16}/[0-9a-f]{12}-heron\.txt"
NOTHING_FOUND = "I couldn't find anything about that in the documents."


@pytest.fixture(scope="module")
def anon_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatUI]:
    """A UI without login: every chat is its own owner (``thread:<id>``)."""
    root = tmp_path_factory.mktemp("privacy_anon")
    docs, cwd = write_files(root / "docs", DOCS), root / "cwd"
    cwd.mkdir()
    fake = FakeOpenAI(FakeOpenAIConfig())
    with (
        serve(fake) as server,
        ingested_ui(docs, cwd, root, _env(root, server.base_url)) as (
            url,
            log,
        ),
    ):
        fake.reset()
        yield ChatUI(url, fake, root, log)


def _heron(root: Path) -> Path:
    path = root / "heron.txt"
    path.write_text(HERON, encoding="utf-8")
    return path


async def _started(ui: ChatUI) -> tuple[ChainlitClient, list[str]]:
    """A connected chat and the names its document filter offers."""
    client = ChainlitClient(ui.url)
    await client.connect()
    _, event = await client.wait_for("chat_settings", limit=20)
    return client, _filter_names(event.data)


def _filter_names(widgets: list[dict[str, Any]]) -> list[str]:
    (source,) = [w for w in widgets if w["id"] == "source"]
    return [item["value"] for item in source["items"]]


def _everything(client: ChainlitClient) -> str:
    """Every event the chat received, as text: what its page could possibly show."""
    return "\n".join(repr(event.data) for event in client.events)


def _retrieved(turn: Turn) -> list[str]:
    (step,) = turn.steps("retrieval")
    return re.findall(r"^\d+\. (\S+)", step["output"], re.M)


async def _welcome(client: ChainlitClient) -> str:
    """The welcome page as the browser fetches it (``/project/settings``' markdown)."""
    async with client.http.get("/project/settings", params={"language": "en-US"}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["markdown"])


async def test_two_anonymous_chats_never_see_each_others_uploads(anon_ui: ChatUI) -> None:
    owner, _ = await _started(anon_ui)
    try:
        file = await owner.upload(_heron(anon_ui.root))
        mine = await owner.ask(HERON_Q, files=[file], limit=60)
        assert mine.elements()[0]["name"] == "[1] heron.txt (uploaded)", mine.summary()
        assert FACT in str(mine.answer["output"]), mine.summary()
        latest = [e for e in owner.events if e.name == "chat_settings"][-1]
        # the upload joins its owner's filter, under the name it is stored by
        (source,) = [n for n in _filter_names(latest.data) if re.fullmatch(UPLOAD_SOURCE, n)]

        stranger, names = await _started(anon_ui)
        try:
            assert names == ["All documents", "falcon.txt", "tallinn.txt"]
            turn = await stranger.ask(HERON_Q, limit=60)
            assert str(turn.answer["output"]).startswith(NOTHING_FOUND), turn.summary()
            assert set(_retrieved(turn)) <= set(DOCS), _retrieved(turn)
            welcome = await _welcome(stranger)
            assert "falcon.txt" in welcome
            seen = _everything(stranger) + welcome
            for trace in (FACT, "battery takes", "heron.txt", source):
                assert trace not in seen, f"{trace!r} reached the other chat"
        finally:
            await stranger.close()
        # the uploader, asking again in the same chat, still finds it
        again = await owner.ask(HERON_Q, limit=60)
        assert FACT in str(again.answer["output"]), again.summary()
        assert "heron.txt" in _retrieved(again)  # the Retrieval step names it as uploaded
    finally:
        await owner.close()


async def test_a_filter_naming_a_source_the_chat_may_not_see_is_refused(
    anon_ui: ChatUI,
) -> None:
    owner, _ = await _started(anon_ui)
    stranger, _ = await _started(anon_ui)
    try:
        file = await owner.upload(_heron(anon_ui.root))
        source = (await owner.ask(HERON_Q, files=[file], limit=60)).elements()[0]["name"][4:]
        for name in (source, "no-such-file.txt"):
            start = len(stranger.events)
            # by hand, as a modified client would: the panel never offered this name
            await stranger.change_settings({"k": 4, "mmr": False, "source": name})
            said = [
                e.data["output"]
                for e in stranger.events[start:]
                if e.name == "new_message" and e.data.get("type") == "assistant_message"
            ]
            assert len(said) == 1 and said[0].count("\n") == 0, said
            assert said[0].startswith("⚠️") and name in said[0], said
        # the filter was not applied: the question searches every shared document
        turn = await stranger.ask(HERON_Q, limit=60)
        assert sorted(set(_retrieved(turn))) == sorted(DOCS), turn.summary()
        assert FACT not in _everything(stranger)
        # a source the chat may see is still taken
        await stranger.change_settings({"k": 4, "mmr": False, "source": "tallinn.txt"})
        assert _retrieved(await stranger.ask(HERON_Q, limit=60)) == ["tallinn.txt"]
    finally:
        await stranger.close()
        await owner.close()


# --- two signed-in users in two browsers -------------------------------------------------------


@pytest.fixture(scope="module")
def login_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatUI]:
    """A UI with login: each user is the owner of what they upload."""
    users = {
        "RAG_UI_USERS": ",".join(f"{user}:{password}" for user, password in USERS.items()),
        "CHAINLIT_AUTH_SECRET": "privacy-test-" + "x" * 40,
    }
    with running_app(tmp_path_factory.mktemp("privacy_login"), DOCS, users) as started:
        yield started


def _signed_in(page: Page, ui: ChatUI, user: str) -> None:
    page.goto(ui.url)
    sign_in(page, user, USERS[user])
    wait_for_chat(page)


def _filter_options(page: Page) -> list[str]:
    """The names the settings panel's document drop-down offers (closed again after)."""
    dialog = open_settings(page)
    dialog.locator("#source").click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    names = [text.strip() for text in options.all_inner_texts()]
    page.keyboard.press("Escape")  # closes the drop-down
    expect(options).to_have_count(0)
    page.keyboard.press("Escape")  # and the panel, changing nothing
    expect(dialog).to_be_hidden()
    return names


def _welcome_text(page: Page) -> str:
    page.locator("#readme-button").click()
    readme = page.get_by_role("dialog")
    readme.get_by_role("heading", name="In this collection").wait_for()
    text = readme.inner_text()
    page.keyboard.press("Escape")
    expect(readme).to_be_hidden()
    return text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_a_users_upload_never_reaches_another_users_page(
    login_ui: ChatUI, browser: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with (
        chat_session(login_ui, browser, request, tmp_path / "alice") as alice,
        chat_session(login_ui, browser, request, tmp_path / "bob") as bob,
    ):
        _signed_in(alice, login_ui, "alice")
        alice.locator('[id="#upload-drop-input"]').set_input_files(_heron(login_ui.root))
        alice.locator("#message-composer").get_by_text("heron.txt").wait_for()
        ask(alice, HERON_Q)
        answered = answer_with(alice, "Sources", timeout=60)
        links = source_links(answered)
        assert FACT in answered.inner_text(), answered.inner_text()
        assert links[0].lower() == "[1] heron.txt (uploaded)", links
        (source,) = [n for n in _filter_options(alice) if re.fullmatch(UPLOAD_SOURCE, n.lower())]

        _signed_in(bob, login_ui, "bob")
        assert _filter_options(bob) == ["All documents", "falcon.txt", "tallinn.txt"]
        ask(bob, HERON_Q)
        refused = answer_with(bob, NOTHING_FOUND, timeout=60)
        assert set(retrieved(bob, 1)) <= set(DOCS), retrieved(bob, 1)
        assert all(link.split("] ", 1)[1] in DOCS for link in source_links(refused))
        welcome = _welcome_text(bob)
        assert "falcon.txt" in welcome and "tallinn.txt" in welcome
        # everything bob's page shows, the opened Retrieval step and the welcome included
        seen = bob.locator("body").inner_text() + welcome
        for trace in (FACT, "battery takes", "heron.txt", source):
            assert trace.lower() not in seen.lower(), f"{trace!r} is on bob's page"

        # alice, in her own chat, is still answered from her upload
        ask(alice, HERON_Q)
        again = answer_with(alice, "Sources", count=2, timeout=60)
        assert FACT in again.inner_text() and source_links(again)[0] == links[0]
