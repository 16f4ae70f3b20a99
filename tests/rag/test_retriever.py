"""The search as a LangChain retriever: LangChain's own standard retriever tests, each mode
through the async and the sync path, and the retriever inside an LCEL chain.

Real Milvus Lite (a collection of a few small documents in the session database) and the
real local embedding model. Each test opens its own store the way the app does, because a
store's async client is bound to the event loop that first awaits it (pymilvus keeps one
connection per loop): the standard tests mix sync tests with an async one in its own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_milvus import Milvus
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import ValidationError

from ingest.pipeline import ingest_path
from rag.config import Settings
from rag.embeddings import LocalMiniLMEmbeddings
from rag.retrieval import SCORE_KEY, PassageRetriever, SearchOptions, retrieve
from tests.conftest import filled_collection, write_files

COLLECTION = "retriever_docs"
DOCS = {
    "parachute.md": "# Heron maintenance\n\nThe emergency parachute of the Heron must be "
    "repacked every 180 days by a certified rigger.\n",
    "rotors.md": "# Spare parts\n\nThe spare rotor kit for the Wren is part number RK-7731. "
    "Order it from the parts desk.\n",
    "battery.md": "# Battery care\n\nCharge the flight battery for two hours before the first "
    "flight and store it at 40 percent.\n",
    "vpn.md": "# VPN errors\n\nThe VPN error QG-41 means the client certificate has expired; "
    "ask the help desk for a new one.\n",
    "expenses.md": "# Expenses\n\nExpense claims above EUR 1,000 need the finance director's "
    "approval as well as the line manager's.\n",
}
PARACHUTE_QUESTION = "How often must the emergency parachute be repacked?"
# Only rotors.md has this word, so BM25 finds one passage where dense search ranks all.
PART_NUMBER = "RK-7731"


@pytest.fixture(scope="module")
async def collection(
    session_db: str,
    local_embeddings: LocalMiniLMEmbeddings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Settings]:
    """DOCS ingested once into a collection of the session database; dropped afterwards."""

    async def fill(store: Milvus, settings: Settings) -> None:
        folder: Path = write_files(tmp_path_factory.mktemp("retriever_docs"), DOCS)
        report = await ingest_path(folder, store, settings)
        assert report.ok and report.count("added") == len(DOCS), report.outcomes

    async with filled_collection(session_db, COLLECTION, local_embeddings, fill) as settings:
        yield settings


class TestPassageRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' RetrieversIntegrationTests: invoke/ainvoke, `k` at construction
    and per call."""

    @pytest.fixture(autouse=True)
    def _store(self, store: Milvus) -> Iterator[None]:
        # Autouse fixtures run first, so the `retriever` fixture and
        # test_k_constructor_param see the store through retriever_constructor_params.
        self.store = store
        yield

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return PassageRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"store": self.store}

    @property
    def retriever_query_example(self) -> str:
        return PARACHUTE_QUESTION


def _scored(documents: list[Document]) -> list[tuple[str | None, float]]:
    return [(d.id, d.metadata[SCORE_KEY]) for d in documents]


@pytest.mark.parametrize("mmr", [False, True])
@pytest.mark.parametrize(("mode", "found"), [("dense", 3), ("bm25", 1), ("hybrid", 3)])
async def test_each_mode_returns_what_retrieve_does_sync_and_async(
    store: Milvus, mode: str, found: int, mmr: bool
) -> None:
    options = SearchOptions(k=3, mode=mode, mmr=mmr, fetch_k=5)  # type: ignore[arg-type]
    hits = await retrieve(store, PART_NUMBER, options)
    retriever = PassageRetriever(store=store, options=options)
    documents = await retriever.ainvoke(PART_NUMBER)
    assert _scored(documents) == [(h.document.metadata["pk"], h.score) for h in hits]
    assert len(documents) == found  # the mode reached the search: BM25 is lexical
    if mode != "dense":
        assert documents[0].metadata["source"] == "rotors.md"
    for document in documents:
        assert document.page_content and document.metadata["source"] in DOCS
        assert "vector" not in document.metadata and "sparse" not in document.metadata
        assert -1 <= document.metadata[SCORE_KEY] <= 1
    blocking = await asyncio.to_thread(retriever.invoke, PART_NUMBER)
    assert [d.id for d in blocking] == [d.id for d in documents]
    assert [d.metadata[SCORE_KEY] for d in blocking] == pytest.approx(
        [d.metadata[SCORE_KEY] for d in documents], abs=1e-5
    )
    assert [d.page_content for d in blocking] == [d.page_content for d in documents]


async def test_options_at_construction_and_per_call_are_checked(store: Milvus) -> None:
    retriever = PassageRetriever(store=store, options=SearchOptions(k=4), sources=("vpn.md",))
    assert retriever.options == SearchOptions(k=4, sources=("vpn.md",))
    documents = await retriever.ainvoke(PARACHUTE_QUESTION)
    assert documents and {d.metadata["source"] for d in documents} == {"vpn.md"}
    per_call = retriever.invoke(PARACHUTE_QUESTION, k=1, sources=["parachute.md"])
    assert [d.metadata["source"] for d in per_call] == ["parachute.md"]
    assert len(retriever.invoke(PART_NUMBER, mode="bm25", sources=())) == 1
    with pytest.raises(TypeError, match="bogus"):
        retriever.invoke(PARACHUTE_QUESTION, bogus=1)
    with pytest.raises(ValidationError, match="mode"):
        await retriever.ainvoke(PARACHUTE_QUESTION, mode="fuzzy")
    with pytest.raises(ValidationError, match="mode"):
        PassageRetriever(store=store, mode="fuzzy")
    with pytest.raises(ValidationError, match="store"):
        PassageRetriever(store=object())


class RetrieverRuns(BaseCallbackHandler):
    """Keeps what LangChain's callbacks (and so its tracing) see of retriever runs."""

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []
        self.ended: list[list[Document]] = []

    def on_retriever_start(
        self, serialized: dict[str, Any], query: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.started.append({"query": query, **kwargs})

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.ended.append(list(documents))


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in documents)


async def test_retriever_composes_in_an_lcel_chain_and_is_traced(store: Milvus) -> None:
    chain = PassageRetriever(store=store, k=2, mode="hybrid") | format_docs
    runs = RetrieverRuns()
    text = await chain.ainvoke(PARACHUTE_QUESTION, config={"callbacks": [runs]})
    assert isinstance(text, str) and text.startswith("[parachute.md] ")
    assert "repacked every 180 days" in text and text.count("\n\n[") == 1
    assert await asyncio.to_thread(chain.invoke, PARACHUTE_QUESTION) == text
    (started,) = runs.started
    assert started["query"] == PARACHUTE_QUESTION and started["name"] == "PassageRetriever"
    assert started["metadata"]["ls_retriever_name"] == "passage"
    assert started["metadata"]["ls_vector_store_provider"] == type(store).__name__
    assert started["metadata"]["ls_embedding_provider"] == "LocalMiniLMEmbeddings"
    (ended,) = runs.ended
    assert format_docs(ended) == text
