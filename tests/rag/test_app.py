"""`open_services` and `open_assistant` close what they opened: Milvus clients, HTTP pools.

Real Milvus Lite in a temporary folder and the loopback fake OpenAI server as both the
embedding endpoint and the chat model; "closed" is shown by what a closed client does
(pymilvus raises instead of reconnecting, httpx refuses to send), not by a flag we set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_openai import OpenAIEmbeddings
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusException

from ingest.pipeline import ingest_path
from rag.app import open_assistant
from rag.config import Settings
from rag.errors import CollectionNotFound, StoreUnavailable
from rag.services import Services, open_services
from tests.conftest import make_settings, write_files
from tests.support.fake_openai import FakeServer

QUESTION = "What is the torque for the anchor nuts?"
DOCS = {"torque.md": "# Assembly\n\nTighten the anchor nuts to 40 Nm with a torque wrench."}


@pytest.fixture
def settings(tmp_path: Path, fake_openai: FakeServer) -> Iterator[Settings]:
    """Its own Lite database, the fake server for embeddings and chat, answers unchecked."""
    db = str(tmp_path / "app.db")
    yield make_settings(
        db,
        "app_docs",
        embedding_provider="openai",
        embedding_base_url=fake_openai.base_url,
        embedding_dimensions=384,
        llm_base_url=fake_openai.base_url,
        llm_model="fake",
        relevance_floor=0.0,
        answer_mode="generate",
        answer_check="off",
    )
    server_manager_instance.release_server(db)


async def ingest_docs(settings: Settings, tmp_path: Path) -> None:
    async with open_services(settings, recreate=True) as services:
        report = await ingest_path(write_files(tmp_path / "docs", DOCS), services.store, settings)
        assert report.ok and report.chunks_written == 1, report.outcomes


async def assert_closed(services: Services) -> None:
    """Both Milvus clients refuse work, and the embedding endpoint's pools are shut."""
    store = services.store
    with pytest.raises(MilvusException):
        store.client.has_collection(services.settings.collection)
    with pytest.raises(MilvusException):
        await store.aclient.has_collection(services.settings.collection)
    embeddings = services.embeddings
    assert isinstance(embeddings, OpenAIEmbeddings)
    assert embeddings.http_async_client.is_closed and embeddings.http_client.is_closed


async def test_open_services_as_a_block_closes_the_clients_it_opened(
    settings: Settings, tmp_path: Path
) -> None:
    await ingest_docs(settings, tmp_path)
    async with open_services(settings) as services:
        store = services.store
        # both clients really are open and connected inside the block
        assert store.client.has_collection(settings.collection)
        assert await store.aclient.has_collection(settings.collection)
        hits = await store.asimilarity_search(QUESTION, k=1)
        assert hits and "40 Nm" in hits[0].page_content
    await assert_closed(services)


async def test_awaited_services_close_with_aclose_once_or_twice(
    settings: Settings, tmp_path: Path
) -> None:
    await ingest_docs(settings, tmp_path)
    services = await open_services(settings)
    assert await services.store.aclient.has_collection(settings.collection)
    await services.aclose()
    await services.aclose()  # safe twice: a second close finds nothing left open
    await assert_closed(services)


async def test_open_assistant_closes_the_chat_model_and_the_store(
    settings: Settings, tmp_path: Path, fake_openai: FakeServer
) -> None:
    await ingest_docs(settings, tmp_path)
    async with open_assistant(settings) as assistant:
        answer = await assistant.chain.ainvoke(QUESTION)
        assert answer.answered and answer.cited == [1]
        assert len(fake_openai.fake.chat_requests()) == 1
        llm = assistant.llm
        assert llm is not None and not llm.http_async_client.is_closed
    assert llm.http_async_client.is_closed
    await assert_closed(assistant.services)
    # the closed chain says so in one line instead of quietly reconnecting
    with pytest.raises(StoreUnavailable, match="cannot use Milvus at "):
        await assistant.chain.ainvoke(QUESTION)
    assert len(fake_openai.fake.chat_requests()) == 1


async def test_chain_for_answers_from_another_collection_and_closes_it(
    settings: Settings, tmp_path: Path
) -> None:
    """One assistant, two collections: each answers from its own rows; a name that does not
    exist is refused without creating it; the extra store is closed with the assistant."""
    await ingest_docs(settings, tmp_path)
    other = settings.model_copy(update={"collection": "other_docs"})
    async with open_services(other, recreate=True) as services:
        docs = write_files(tmp_path / "other", {"heron.md": "# Birds\n\nThe grey heron nests."})
        assert (await ingest_path(docs, services.store, other)).ok
    async with open_assistant(settings) as assistant:
        assert await assistant.chain_for() is assistant.chain
        assert await assistant.chain_for("app_docs") is assistant.chain
        chain = await assistant.chain_for("other_docs")
        assert await assistant.chain_for("other_docs") is chain  # opened once
        answer = await chain.ainvoke("Where does the heron nest?")
        assert [hit.source for hit in answer.hits] == ["heron.md"]
        counts = {info.name: info.rows for info in await assistant.collections()}
        assert counts == {"app_docs": 1, "other_docs": 1}
        with pytest.raises(CollectionNotFound, match="no collection named 'missing'"):
            await assistant.chain_for("missing")
        assert not assistant.services.store.client.has_collection("missing")
    with pytest.raises(MilvusException):
        await chain.store.aclient.has_collection("other_docs")
