"""Collections chosen in the chat: `rag ui` on a Milvus server holding three collections.

One `rag ui` process for the module (a start costs ~20 s), with a login so chats are kept
and can be resumed; `rag ingest -c` fills the collections on a `milvus-lite server`, which
the test process can reach at the same time as the UI (a Milvus Lite file is one process's),
so a test can drop a collection under the running chat. The loopback fake OpenAI server
provides embeddings and the chat model; `tests/support/chainlit_client.py` plays the tab.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from rag.auth import mint_api_key
from rag.ui.welcome import load_starters
from tests.conftest import cli_env, fake_models_env, write_files
from tests.support.chainlit_client import MESSAGE_EVENTS, ChainlitClient, Turn, login
from tests.support.docs import DOCS, FALCON_Q
from tests.support.fake_openai import FakeOpenAI, FakeServer, serve
from tests.support.ui_process import RAG_BIN, running_ui

pytestmark = pytest.mark.slow

CONFIGURED = "atlas"  # RAG_COLLECTION: the three documents of tests/support/docs.py
HERON_Q = "How far does the Heron QX-9 drone fly on one charge?"
BRAVO = {
    "heron.txt": "The Heron QX-9 drone flies 42 kilometres on one charge.\n",
    "stations/glacier.md": "The Glacier research station keeps its spare radio in locker 7B.\n",
}
GAMMA_Q = "What is the code of the Gamma lab's coffee machine?"
GAMMA = {"gamma_notes.txt": "The code of the Gamma lab's coffee machine is 5521.\n"}
PASSWORD = "looking-glass"
SECRET = "c" * 48
API_KEY, API_ENTRY = mint_api_key("alice")  # the chat's alice, as an API key owner


@dataclass(frozen=True)
class CollectionsUI:
    url: str
    fake: FakeServer
    milvus_uri: str
    cwd: Path
    log: Path


def _ingest(folder: Path, collection: str, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(RAG_BIN), "ingest", str(folder), "--collection", collection],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"rag ingest -c {collection}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def collections_ui(
    tmp_path_factory: pytest.TempPathFactory, milvus_server: str
) -> Iterator[CollectionsUI]:
    root = tmp_path_factory.mktemp("collections_ui")
    cwd = root / "cwd"
    cwd.mkdir()
    with serve(FakeOpenAI()) as fake:
        env = cli_env(
            RAG_MILVUS_URI=milvus_server,
            RAG_COLLECTION=CONFIGURED,
            RAG_UI_DIR=str(root / "ui"),
            RAG_UPLOAD_DIR=str(root / "uploads"),
            RAG_DATABASE_URL=f"sqlite:///{root / 'chat.db'}",
            RAG_UI_USERS=f"alice:{PASSWORD},bob:{PASSWORD}",
            CHAINLIT_AUTH_SECRET=SECRET,
            RAG_API_KEYS=API_ENTRY,
            **fake_models_env(fake.base_url),
        )
        for name, docs in ((CONFIGURED, DOCS), ("bravo", BRAVO), ("gamma", GAMMA)):
            _ingest(write_files(root / name, docs), name, cwd, env)
        log = root / "ui.log"
        with running_ui(cwd=cwd, env=env, log=log, ready="/auth/config") as url:
            yield CollectionsUI(url, fake, milvus_server, cwd, log)


async def _client(ui: CollectionsUI, user: str = "alice", thread_id: str = "") -> ChainlitClient:
    """A signed-in tab whose chat has started (or resumed): its settings have arrived."""
    cookies = await login(ui.url, user, PASSWORD)
    client = ChainlitClient(ui.url, cookies=cookies, thread_id=thread_id)
    await client.connect()
    await client.wait_for("chat_settings", limit=60)
    return client


def _widgets(client: ChainlitClient) -> dict[str, dict[str, Any]]:
    """The settings panel as last sent, by widget id."""
    latest = [e for e in client.events if e.name == "chat_settings"][-1]
    return {widget["id"]: widget for widget in latest.data}


def _items(widget: dict[str, Any]) -> dict[str, str]:
    return {item["label"]: item["value"] for item in widget["items"]}


def _cited(turn: Turn) -> list[str]:
    """The sources an answer lists (its side elements' names, without "[n] ")."""
    return [re.sub(r"^\[\d+\] ", "", element["name"]) for element in turn.elements()]


def _said(client: ChainlitClient, after: int = 0) -> list[str]:
    """The text of every assistant message sent after event ``after``."""
    return [
        str(e.data.get("output") or "")
        for e in client.events[after:]
        if e.name == "new_message" and e.data.get("type") == "assistant_message"
    ]


async def _message_where(
    client: ChainlitClient, after: int, wanted: Callable[[dict[str, Any]], bool], limit: float = 45
) -> dict[str, Any]:
    """The first message (new or updated) after event ``after`` that is ``wanted``."""
    deadline = time.monotonic() + limit
    while True:
        for event in client.events[after:]:
            if event.name in MESSAGE_EVENTS and wanted(event.data):
                return dict(event.data)
        assert time.monotonic() < deadline, [e.name for e in client.events[after:]]
        await asyncio.sleep(0.1)


def _answer_with_sources(data: dict[str, Any]) -> bool:
    return data.get("type") == "assistant_message" and "**Sources**" in str(data.get("output"))


async def _choose(client: ChainlitClient, collection: str) -> int:
    """Pick ``collection`` in the settings panel; returns the index of the first event after."""
    start = len(client.events)
    await client.change_settings({"collection": collection})
    return start


# --------------------------------------------------------------------------------------------


async def test_settings_list_the_collections_with_document_counts(
    collections_ui: CollectionsUI,
) -> None:
    client = await _client(collections_ui)
    try:
        widgets = _widgets(client)
        assert list(widgets) == ["collection", "k", "mmr", "search", "source"], widgets
        choice = widgets["collection"]
        assert _items(choice) == {
            "atlas (3 documents)": "atlas",
            "bravo (2 documents)": "bravo",
            "gamma (1 document)": "gamma",
        }, choice
        assert choice["initial"] == CONFIGURED
        assert [i["value"] for i in widgets["source"]["items"]] == [
            "All documents",
            *sorted(DOCS),
        ]
        # the Readme panel (one page for everyone) names the others and how to choose one
        async with client.http.get("/project/settings", params={"language": "en-US"}) as got:
            readme = (await got.json())["markdown"]
        others = readme.split("## Other collections", 1)[1]
        assert "**bravo**: 2 documents" in others and "**gamma**: 1 document" in others, readme
        assert "falcon.txt" in readme.split("## Other collections", 1)[0]
    finally:
        await client.close()


async def test_a_chosen_collection_answers_filters_and_describes_itself(
    collections_ui: CollectionsUI,
) -> None:
    client = await _client(collections_ui)
    try:
        start = await _choose(client, "bravo")
        said = _said(client, start)
        assert any("Now answering from **bravo**, 2 documents: heron.txt" in s for s in said), said
        widgets = _widgets(client)
        assert widgets["collection"]["initial"] == "bravo"
        sources = [i["value"] for i in widgets["source"]["items"]]
        assert sources == ["All documents", "heron.txt", "stations/glacier.md"], sources

        turn = await client.ask(HERON_Q)
        assert "42 kilometres" in str(turn.answer["output"]), turn.summary()
        assert _cited(turn) and set(_cited(turn)) <= set(BRAVO), _cited(turn)
        # a question about the configured collection's documents finds nothing of them here
        other = await client.ask(FALCON_Q)
        assert set(_cited(other)) <= set(BRAVO), _cited(other)
        assert "ZX-4471" not in str(other.answer["output"])

        # the document filter takes bravo's names, and atlas's are refused
        await client.change_settings({"source": "stations/glacier.md"})
        assert _cited(await client.ask(HERON_Q)) == ["stations/glacier.md"]
        before = len(client.events)
        await client.change_settings({"source": "falcon.txt"})
        assert any("no document “falcon.txt”" in s for s in _said(client, before))

        # and back: the filter starts again at all documents of the configured collection
        await _choose(client, CONFIGURED)
        assert _widgets(client)["source"]["initial"] == "All documents"
        back = await client.ask(FALCON_Q)
        assert _cited(back)[0] == "falcon.txt" and "ZX-4471" in str(back.answer["output"])
    finally:
        await client.close()


async def test_starters_come_from_each_collections_documents(
    collections_ui: CollectionsUI,
) -> None:
    samples = {question for _, question in load_starters()}
    client = await _client(collections_ui)
    try:
        async with client.http.get("/project/settings", params={"language": "en-US"}) as got:
            start_screen = [s["message"] for s in (await got.json())["starters"]]
        assert start_screen == [f"What is {name} about?" for name in sorted(DOCS)], start_screen
        assert not samples & set(start_screen), "the sample corpus's questions for atlas"

        start = await _choose(client, "bravo")
        buttons = [e.data for e in client.events[start:] if e.name == "action"]
        asked = [b["payload"]["question"] for b in buttons]
        assert asked == [f"What is {name} about?" for name in sorted(BRAVO)], buttons
        assert [b["label"] for b in buttons] == ["heron", "glacier"]

        # a button asks its question in the chosen collection, as if typed
        before = len(client.events)
        payload = {"action": buttons[0], "sessionId": client.session_id}
        async with client.http.post("/project/action", json=payload) as response:
            assert response.status == 200, await response.text()
        final = await _message_where(client, before, _answer_with_sources)
        assert "- [1] heron.txt" in final["output"], final["output"]
        shown = [e.data for e in client.events[before:] if e.name == "new_message"]
        assert any(
            m.get("type") == "user_message" and m.get("output") == asked[0] for m in shown
        ), shown
    finally:
        await client.close()


async def test_a_collection_not_offered_is_refused(collections_ui: CollectionsUI) -> None:
    client = await _client(collections_ui)
    try:
        for name in ("no_such_collection", "../atlas"):
            start = await _choose(client, name)
            said = _said(client, start)
            assert said == [
                f"⚠️ There is no collection “{name}” to answer from; still answering from “atlas”."
            ], said
            assert _widgets(client)["collection"]["initial"] == CONFIGURED
        turn = await client.ask(FALCON_Q)
        assert _cited(turn)[0] == "falcon.txt"
    finally:
        await client.close()


async def test_the_chat_process_serves_the_api_on_its_own_port(
    collections_ui: CollectionsUI,
) -> None:
    """With RAG_API_KEYS set, `rag ui` answers /v1 too (ahead of Chainlit's page route),
    through the official SDK: every collection is a model, each answers from its own rows."""
    client = openai.AsyncOpenAI(base_url=f"{collections_ui.url}/v1", api_key=API_KEY, max_retries=0)
    try:
        models = {model.id async for model in client.models.list()}
        assert {CONFIGURED, "bravo", "gamma"} <= models
        reply = await client.chat.completions.create(
            model="bravo", messages=[{"role": "user", "content": HERON_Q}]
        )
        sources = {source["source"] for source in (reply.model_extra or {})["sources"]}
        assert sources and sources <= set(BRAVO), sources
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(
                base_url=f"{collections_ui.url}/v1", api_key="alice.wrong", max_retries=0
            ).models.list()
    finally:
        await client.close()


async def test_uploads_go_to_the_chosen_collection(collections_ui: CollectionsUI) -> None:
    upload = collections_ui.cwd / "kestrel.txt"
    upload.write_text("The Kestrel K-2 glider has a wingspan of 3.1 metres.\n", encoding="utf-8")
    client = await _client(collections_ui, "bob")
    try:
        await _choose(client, "gamma")
        file = await client.upload(upload)
        turn = await client.ask("What is the wingspan of the Kestrel K-2?", files=[file])
        assert _cited(turn)[0] == "kestrel.txt (uploaded)", turn.summary()
        widgets = _widgets(client)
        assert _items(widgets["collection"])["gamma (2 documents)"] == "gamma", widgets
    finally:
        await client.close()
    listed = await _sources(collections_ui, "gamma")
    assert any(s["source"].endswith("-kestrel.txt") and s["owner"] == "bob" for s in listed)
    assert not any("kestrel" in s["source"] for s in await _sources(collections_ui, CONFIGURED))
    # alice does not count bob's upload
    alice = await _client(collections_ui)
    try:
        assert "gamma (1 document)" in _items(_widgets(alice)["collection"])
    finally:
        await alice.close()


async def _sources(ui: CollectionsUI, collection: str) -> list[dict[str, Any]]:
    """`rag sources --json` of ``collection``, read from the server beside the running UI."""
    process = await asyncio.create_subprocess_exec(
        str(RAG_BIN),
        "sources",
        "--json",
        "--collection",
        collection,
        cwd=ui.cwd,
        env=cli_env(RAG_MILVUS_URI=ui.milvus_uri, **fake_models_env(ui.fake.base_url)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return list(json.loads(out))


def _pick_in_chromium(url: str, chromium: str) -> None:
    """Sign in, choose bravo in the settings panel, ask, and press one of its starters.

    Playwright's sync API, run in a thread of its own by the test so it stays clear of the
    test's event loop; the helpers are the browser tests' own.
    """
    from playwright.sync_api import expect, sync_playwright

    from tests.ui.test_browser import (
        ANSWER,
        CHROMIUM_ARGS,
        TIMEOUT_MS,
        VIEWPORT,
        answer_with,
        ask,
        confirm_settings,
        open_settings,
        sign_in,
        source_links,
        wait_for_chat,
    )

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()  # type: ignore[arg-type]
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            sign_in(page, "alice", PASSWORD)
            wait_for_chat(page)
            dialog = open_settings(page)
            dialog.locator("#collection").click()
            page.get_by_role("option", name="bravo (2 documents)", exact=True).click()
            expect(dialog.locator("#collection")).to_have_text("bravo (2 documents)")
            confirm_settings(dialog)
            described = answer_with(page, "Now answering from").inner_text()
            assert "bravo" in described and "heron.txt" in described, described

            ask(page, HERON_Q)
            answer = answer_with(page, "Sources")
            assert "42 kilometres" in answer.inner_text(), answer.inner_text()
            assert source_links(answer)[0] == "[1] heron.txt", source_links(answer)

            page.get_by_role("button", name="glacier").click()
            expect(page.locator('[data-step-type="user_message"]').last).to_contain_text(
                "What is stations/glacier.md about?"
            )
            second = answer_with(page, "Sources", count=2)
            links = [re.sub(r"^\[\d+\] ", "", link) for link in source_links(second)]
            assert links and set(links) <= set(BRAVO), links
            assert page.locator(ANSWER).count() >= 3
        finally:
            browser.close()


async def test_in_chromium_a_collection_is_picked_in_the_settings_panel(
    collections_ui: CollectionsUI,
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    await asyncio.to_thread(_pick_in_chromium, collections_ui.url, chromium)


def _answered_from(thread: dict[str, Any]) -> list[str]:
    """The collection each stored answer of a thread records."""
    found = []
    for step in thread.get("steps") or []:
        meta = step.get("metadata") or {}
        meta = json.loads(meta) if isinstance(meta, str) else meta
        if "rag" in meta:
            found.append(meta["rag"].get("collection"))
    return found


async def _answers_stored(client: ChainlitClient, thread_id: str, count: int) -> list[str]:
    """The collections of a thread's answers once ``count`` are stored (Chainlit writes the
    thread and its steps in background tasks)."""
    deadline = time.monotonic() + 30
    while True:
        status, thread = await client.thread(thread_id)
        if status == 200 and len(found := _answered_from(thread)) >= count:
            return found
        assert time.monotonic() < deadline, f"thread {thread_id}: {status} {thread}"
        await asyncio.sleep(0.2)


async def test_a_resumed_chat_keeps_its_collection_until_it_is_dropped(
    collections_ui: CollectionsUI,
) -> None:
    """Runs last: it drops gamma."""
    client = await _client(collections_ui)
    try:
        await _choose(client, "gamma")
        first = await client.ask(GAMMA_Q)
        thread_id = str(first.answer["threadId"])
        assert _cited(first)[0] == "gamma_notes.txt"
        # each stored answer says where it came from, which a resumed chat reads when the
        # settings Chainlit writes at disconnect are missing
        assert await _answers_stored(client, thread_id, 1) == ["gamma"]
    finally:
        await client.close()

    resumed = await _client(collections_ui, thread_id=thread_id)
    try:
        assert (await resumed.resumed())["id"] == thread_id
        assert _widgets(resumed)["collection"]["initial"] == "gamma"
        again = await resumed.ask(GAMMA_Q)
        assert _cited(again)[0] == "gamma_notes.txt" and "5521" in str(again.answer["output"])
    finally:
        await resumed.close()

    from pymilvus import MilvusClient

    live = await _client(collections_ui, "bob")  # a chat in gamma while it is dropped
    try:
        await _choose(live, "gamma")
        milvus = MilvusClient(uri=collections_ui.milvus_uri)
        try:
            milvus.drop_collection("gamma")
        finally:
            milvus.close()
        turn = await live.ask(FALCON_Q)
        said = [str(m.get("output")) for m in turn.assistant_messages()]
        assert said[0] == (
            "⚠️ There is no collection “gamma” to answer from; answering from “atlas”."
        ), said
        assert _cited(turn)[0] == "falcon.txt"
        assert _widgets(live)["collection"]["initial"] == CONFIGURED
    finally:
        await live.close()

    fallback = await _client(collections_ui, thread_id=thread_id)
    try:
        await fallback.resumed()
        said = _said(fallback)
        assert "⚠️ There is no collection “gamma” to answer from; answering from “atlas”." in said, (
            said
        )
        widgets = _widgets(fallback)
        assert widgets["collection"]["initial"] == CONFIGURED
        assert "gamma" not in _items(widgets["collection"]).values()
        turn = await fallback.ask(FALCON_Q)
        assert _cited(turn)[0] == "falcon.txt"
    finally:
        await fallback.close()
