"""The Chainlit chat end to end: `rag ui` in a subprocess, driven over its real socket.io protocol.

Nothing is mocked inside the app. `rag ingest` builds a Milvus Lite database from three tiny
documents, `rag ui` serves it, and the loopback fake OpenAI server (in this process, so its
traffic can be inspected) provides both the embeddings and a streaming chat model. The client
in ``tests/support/chainlit_client.py`` plays a browser tab (see its docstring for the protocol).

Milvus Lite locks a database file to one process, so the ingest subprocess has exited before
the UI starts, and this module never opens the database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fake_embeddings_env, write_files
from tests.support.chainlit_client import ChainlitClient, Turn
from tests.support.cli_inprocess import invoke_rag
from tests.support.docs import DOCS, FALCON_Q, OLGA_Q, TALLINN_Q
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, serve
from tests.support.ui_process import running_ui

pytestmark = pytest.mark.slow

COLLECTION = "chat_ui"
# Given only in a .env file in the folder `rag ui` is started from, as a user would.
DOTENV = {"RAG_LLM_MODEL": "fake-from-dotenv", "RAG_TOP_K": "3"}
TOKEN_DELAY = 0.03  # seconds between streamed chunks: slow enough to see a stream, still quick


@dataclass(frozen=True)
class ChatUI:
    url: str
    fake: FakeOpenAI
    root: Path
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def chat_prompts(self) -> list[str]:
        """Every chat request's messages, flattened to one text each."""
        return [
            "\n".join(f"{m.get('role')}: {m.get('content')}" for m in body.get("messages", []))
            for body in self.fake.chat_requests()
        ]


def _env(root: Path, base_url: str) -> dict[str, str]:
    """Only these RAG_* variables reach the app (no developer settings, no .env in cwd)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "CHAINLIT_"))}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
            "RAG_MILVUS_URI": str(root / "m.db"),
            "RAG_COLLECTION": COLLECTION,
            **fake_embeddings_env(base_url),
            "RAG_LLM_BASE_URL": base_url,
            "RAG_UI_DIR": str(root / "ui"),
            "RAG_UPLOAD_DIR": str(root / "uploads"),
        }
    )
    return env


@contextlib.contextmanager
def ingested_ui(
    docs: Path, cwd: Path, root: Path, env: dict[str, str], start_timeout: float = 30
) -> Iterator[tuple[str, Path]]:
    """Ingest ``docs`` (`rag ingest`, in-process), then run `rag ui` on a free port until exit.

    Yields the UI's URL and its log file. Ingest must finish first: Milvus Lite
    lets one process at a time open a database file. ``start_timeout`` is longer for a
    UI that first starts the bundled local model.
    """
    # In-process: `rag ingest` as a console script is tested in tests/cli/; here it only
    # fills the database, and a process start would cost seconds per UI.
    variables = {k: v for k, v in env.items() if k.startswith("RAG_")}
    ingest = invoke_rag("ingest", str(docs), cwd=cwd, **variables)
    assert ingest.returncode == 0, f"rag ingest failed:\n{ingest.stdout}\n{ingest.stderr}"
    log = root / "ui.log"
    with running_ui(cwd=cwd, env=env, log=log, timeout=start_timeout) as url:
        yield url, log


@pytest.fixture(scope="module")
def chat_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatUI]:
    root = tmp_path_factory.mktemp("chat_ui")
    docs, cwd = write_files(root / "docs", DOCS), root / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text("".join(f"{k}={v}\n" for k, v in DOTENV.items()), encoding="utf-8")
    fake = FakeOpenAI(FakeOpenAIConfig(chat_token_delay=TOKEN_DELAY))
    with serve(fake) as server:
        env = _env(root, server.base_url)
        with ingested_ui(docs, cwd, root, env) as (url, log):
            fake.reset()  # forget the ingestion traffic
            yield ChatUI(url, fake, root, log)


async def _start(ui: ChatUI) -> tuple[ChainlitClient, list[dict[str, Any]]]:
    """A connected client whose on_chat_start has finished; returns the settings widgets."""
    client = ChainlitClient(ui.url)
    await client.connect()
    _, event = await client.wait_for("chat_settings", limit=20)
    return client, event.data


def _answer_text(turn: Turn) -> str:
    return str(turn.answer["output"])


# --------------------------------------------------------------------------------------------


async def test_connecting_starts_a_chat_with_settings(chat_ui: ChatUI) -> None:
    client, widgets = await _start(chat_ui)
    try:
        by_id = {w["id"]: w for w in widgets}
        assert list(by_id) == ["k", "mmr", "search", "source"], widgets
        assert by_id["mmr"]["initial"] is False
        # Milvus Lite has BM25, so all three search modes are offered
        search = by_id["search"]
        assert [item["value"] for item in search["items"]] == [
            "Meaning (dense vectors)",
            "Keywords (BM25)",
            "Both (hybrid)",
        ]
        assert search["initial"] == "Both (hybrid)", "hybrid is the default mode"
        source = by_id["source"]
        assert source["initial"] == "All documents"
        # the filter lists what `rag ingest` stored, read from Milvus by the UI process
        values = [item["value"] for item in source["items"]]
        assert values == ["All documents", "falcon.txt", "kitchen/olga.md", "tallinn.txt"]
        warnings = [
            e for e in client.events if e.name == "new_message" and "⚠️" in e.data.get("output", "")
        ]
        assert not warnings, warnings
        # the welcome page (chainlit.md in the runtime app root) lists the collection
        welcome = (chat_ui.root / "ui" / "chainlit.md").read_text(encoding="utf-8")
        assert "falcon.txt" in welcome and COLLECTION in welcome
    finally:
        await client.close()


async def test_answer_streams_then_lists_sources_with_side_elements(chat_ui: ChatUI) -> None:
    chat_ui.fake.reset()
    client, _ = await _start(chat_ui)
    try:
        turn = await client.ask(FALCON_Q)
        trace = turn.summary()
        answer = _answer_text(turn)

        # the Retrieval step shows the hits before the answer starts
        (retrieval,) = turn.steps("retrieval")
        assert retrieval["name"] == "Retrieval", trace
        assert "1. falcon.txt" in retrieval["output"], retrieval["output"]
        step_shown = min(
            e.at for e in turn.named("update_message") if e.data["id"] == retrieval["id"]
        )

        # streamed: the first token is shown, then several more, well before the final message
        tokens = turn.tokens()
        assert len(tokens) >= 6, trace
        assert len(turn.named("stream_token")) == len(tokens) - 1
        first, last, final = tokens[0][0], tokens[-1][0], turn.final_at()
        assert step_shown <= first, trace
        assert last - first >= TOKEN_DELAY * (len(tokens) - 1) * 0.5, trace
        assert final - first >= 0.1, trace
        streamed = "".join(text for _, text in tokens)

        # the final message: the streamed text, then the numbered sources
        assert "ZX-4471" in streamed and "[1]" in streamed, streamed
        body, sources = answer.split("\n\n**Sources**\n", 1)
        assert body == streamed.strip(), (body, streamed)
        assert sources.splitlines()[0].startswith("- [1] falcon.txt (score "), sources
        assert turn.answer["streaming"] is False

        # side elements: one Text per passage, named so "[n] source" in the text links to it
        elements = turn.elements()
        names = [e["name"] for e in elements]
        assert names and names[0] == "[1] falcon.txt", names
        assert all(e["type"] == "text" and e["display"] == "side" for e in elements), elements
        assert all(name in answer for name in names), (names, answer)
        assert "ZX-4471" in await client.element_content(elements[0])

        # the model was given the numbered context and the question (no condense: no history)
        (prompt,) = chat_ui.chat_prompts()
        passage = "falcon\n\nThe launch code for Project Falcon is ZX-4471."  # header, text
        assert f"[1] (source: falcon.txt)\n{passage}" in prompt
        assert f"Question: {FALCON_Q}" in prompt
        (request,) = chat_ui.fake.chat_requests()
        assert request["stream"] is True
    finally:
        await client.close()


async def test_follow_up_is_condensed_with_the_history(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        await client.ask(FALCON_Q)
        chat_ui.fake.reset()
        turn = await client.ask("And the wifi password of the Tallinn office?")
        condense, answer = chat_ui.chat_prompts()
        assert "Stand-alone question" in condense and "ZX-4471" in condense, condense
        assert "[1] (source: tallinn.txt)" in answer, answer
        (retrieval,) = turn.steps("retrieval")
        expected = "Stand-alone question: And the wifi password of the Tallinn office?"
        assert expected in retrieval["output"], retrieval["output"]
        assert "kelp-harbor-93" in _answer_text(turn)
    finally:
        await client.close()


async def test_two_sessions_at_once_get_their_own_answers(chat_ui: ChatUI) -> None:
    (a, _), (b, _) = await asyncio.gather(_start(chat_ui), _start(chat_ui))
    try:
        turn_a, turn_b = await asyncio.gather(a.ask(OLGA_Q), b.ask(TALLINN_Q))
        text_a, text_b = _answer_text(turn_a), _answer_text(turn_b)
        assert "smoked plums" in text_a and "kelp-harbor-93" not in text_a, text_a
        assert "kelp-harbor-93" in text_b and "smoked plums" not in text_b, text_b
        assert turn_a.elements()[0]["name"] == "[1] kitchen/olga.md"
        assert turn_b.elements()[0]["name"] == "[1] tallinn.txt"
        # no cross-talk: every event a client received belongs to its own messages
        for client, turn, other in ((a, turn_a, turn_b), (b, turn_b, turn_a)):
            ids = {e.data.get("id") for e in turn.events if isinstance(e.data, dict)}
            assert turn.answer["id"] in ids and other.answer["id"] not in ids
            assert all(e.data["id"] == turn.answer["id"] for e in turn.named("stream_token"))
            assert all(e.name != "stream_token" or e.data["id"] != other.answer["id"]
                       for e in client.events)  # fmt: skip
        # and the two answers really were streamed at the same time
        (a0, a1), (b0, b1) = [(t.tokens()[0][0], t.tokens()[-1][0]) for t in (turn_a, turn_b)]
        assert a0 < b1 and b0 < a1, "the answers were streamed one after the other"
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_llm_down_shows_a_warning_and_the_next_question_works(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        chat_ui.fake.reset()
        chat_ui.fake.fail_next("chat", 500, count=3)  # the first call and both retries
        turn = await client.ask(FALCON_Q, limit=60)
        text = _answer_text(turn)
        assert text.startswith("⚠️ the chat model at"), text
        assert "500" in text and "**Sources**" not in text, text
        assert not turn.named("stream_start", "stream_token")
        statuses = [r.status for r in chat_ui.fake.requests if r.kind == "chat"]
        assert statuses == [500, 500, 500], statuses  # bounded retries, no storm

        again = await client.ask(FALCON_Q)
        assert "ZX-4471" in _answer_text(again) and "**Sources**" in _answer_text(again)
        assert again.answer["id"] != turn.answer["id"]
    finally:
        await client.close()


async def test_document_filter_from_chat_settings(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        await client.change_settings({"k": 4, "mmr": False, "source": "tallinn.txt"})
        turn = await client.ask(TALLINN_Q)
        names = [e["name"] for e in turn.elements()]
        assert names == ["[1] tallinn.txt"], names

        await client.change_settings({"k": 4, "mmr": False, "source": "kitchen/olga.md"})
        chat_ui.fake.reset()
        turn = await client.ask(FALCON_Q)
        names = [e["name"] for e in turn.elements()]
        assert names == ["[1] kitchen/olga.md"], names
        # nothing relevant in that document: the closest passage is shown, the model not asked
        text = _answer_text(turn)
        assert "**Closest passages**" in text and "ZX-4471" not in text, text
        assert not any("<documents>" in p for p in chat_ui.chat_prompts())
    finally:
        await client.close()


async def test_search_mode_from_chat_settings(chat_ui: ChatUI) -> None:
    """Keywords (BM25) only brings back passages sharing a word with the question;
    meaning (dense) ranks every passage, so the Retrieval step lists all three."""
    client, _ = await _start(chat_ui)
    try:
        listed = {}
        for label in ("Meaning (dense vectors)", "Keywords (BM25)", "Both (hybrid)"):
            await client.change_settings({"k": 4, "search": label, "source": "All documents"})
            turn = await client.ask("ZX-4471?")
            (retrieval,) = turn.steps("retrieval")
            listed[label] = re.findall(r"^\d+\. (\S+)", retrieval["output"], re.M)
        assert sorted(listed["Meaning (dense vectors)"]) == sorted(DOCS), listed
        assert listed["Keywords (BM25)"] == ["falcon.txt"], listed
        assert listed["Both (hybrid)"][0] == "falcon.txt", listed
    finally:
        await client.close()


async def test_uploaded_file_is_ingested_then_answered_from(chat_ui: ChatUI) -> None:
    upload = chat_ui.root / "heron.txt"
    upload.write_text(
        "The Heron QX-9 drone flies 42 kilometres on one charge. Its battery takes an hour.\n",
        encoding="utf-8",
    )
    client, _ = await _start(chat_ui)
    try:
        file = await client.upload(upload)
        turn = await client.ask("How far does the Heron QX-9 drone fly?", files=[file], limit=60)
        trace = turn.summary()
        (step,) = turn.steps("tool")
        assert step["name"] == "Adding your files", trace
        assert re.match(r"✅ heron\.txt: [1-9]\d* passages? added", step["output"]), step["output"]
        report, _answer = turn.assistant_messages()[:2]
        assert report["output"].startswith("✅ heron.txt"), trace
        assert "42 kilometres" in _answer_text(turn), trace
        # shown by its own name; stored as this chat's: in its owner's folder, named after
        # its content
        assert turn.elements()[0]["name"] == "[1] heron.txt (uploaded)", turn.summary()
        stored = list((chat_ui.root / "uploads").glob("*/*-heron.txt"))
        assert [p.relative_to(chat_ui.root / "uploads").as_posix() for p in stored], stored
        assert all(
            re.fullmatch(r"[0-9a-f]{16}/[0-9a-f]{12}-heron\.txt", p.parent.name + "/" + p.name)
            for p in stored
        ), stored
    finally:
        await client.close()


async def test_answer_cut_off_mid_stream_keeps_the_partial_text(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        chat_ui.fake.drop_stream_after(4)  # the role chunk and three words, then the socket closes
        turn = await client.ask(FALCON_Q)
        streamed = "".join(text for _, text in turn.tokens())
        assert streamed == "According to the ", turn.summary()
        text = _answer_text(turn)
        assert text.startswith(streamed + "\n\n⚠️ the chat model at"), text
        assert "cut off" in text and "**Sources**" not in text, text
        assert turn.elements() == []
        assert "ZX-4471" in _answer_text(await client.ask(FALCON_Q))
    finally:
        await client.close()


async def test_embedding_failure_leaves_the_session_usable(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        chat_ui.fake.fail_next("embeddings", 400)  # not retried: fails at once
        turn = await client.ask(FALCON_Q)
        (retrieval,) = turn.steps("retrieval")
        assert retrieval["isError"] is True and "400" in retrieval["output"], retrieval
        assert "ZX-4471" in _answer_text(await client.ask(FALCON_Q))
    finally:
        await client.close()


async def test_embedding_failure_shows_a_warning(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        chat_ui.fake.fail_next("embeddings", 400)
        turn = await client.ask(FALCON_Q)
        messages = turn.assistant_messages()
        assert messages and "⚠️" in messages[-1]["output"], turn.summary()
    finally:
        await client.close()


async def test_editing_a_question_answers_the_new_one(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        first = await client.ask(FALCON_Q)
        edited = await client.edit(first.message_id, TALLINN_Q)
        deleted = {e.data["id"] for e in edited.named("delete_message")}
        assert first.answer["id"] in deleted, edited.summary()
        assert "kelp-harbor-93" in _answer_text(edited)
        assert edited.elements()[0]["name"] == "[1] tallinn.txt"
    finally:
        await client.close()


async def test_editing_a_question_forgets_the_replaced_turn(chat_ui: ChatUI) -> None:
    client, _ = await _start(chat_ui)
    try:
        first = await client.ask(FALCON_Q)
        chat_ui.fake.reset()
        await client.edit(first.message_id, TALLINN_Q)
        prompts = chat_ui.chat_prompts()
        assert not any("ZX-4471" in p for p in prompts), prompts
        assert len(prompts) == 1, "the only question was condensed against a removed turn"
    finally:
        await client.close()


async def test_settings_from_dotenv_reach_the_ui(chat_ui: ChatUI) -> None:
    client, widgets = await _start(chat_ui)
    try:
        k = next(w for w in widgets if w["id"] == "k")
        chat_ui.fake.reset()
        await client.ask(FALCON_Q)
        models = {r.get("model") for r in chat_ui.fake.chat_requests()}
        assert (k["initial"], models) == (3, {DOTENV["RAG_LLM_MODEL"]})
    finally:
        await client.close()
