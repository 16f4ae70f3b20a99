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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_files
from tests.support.chainlit_client import ChainlitClient, Turn
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, serve
from tests.ui.test_chat_ui import ChatUI, _env, ingested_ui

pytestmark = pytest.mark.slow

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
        source = mine.elements()[0]["name"].removeprefix("[1] ")
        assert re.fullmatch(UPLOAD_SOURCE, source), mine.summary()
        assert FACT in str(mine.answer["output"]), mine.summary()
        latest = [e for e in owner.events if e.name == "chat_settings"][-1]
        assert source in _filter_names(latest.data), "the upload joins its owner's filter"

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
        assert FACT in str(again.answer["output"]) and source in _retrieved(again)
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
