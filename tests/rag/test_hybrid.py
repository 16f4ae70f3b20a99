"""BM25 and hybrid retrieval on Milvus Lite, and the fallback where a store has no BM25."""

from __future__ import annotations

import asyncio
import re

import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient

from rag.embeddings import LocalMiniLMEmbeddings, embedding_identity
from rag.errors import EmbeddingMismatch
from rag.retrieval import PassageRetriever, SearchOptions, retrieve
from rag.store.milvus import CollectionIdentity, _create_collection, bm25_unavailable_reason
from tests.conftest import Corpus, OpenEnv, make_settings, run_rag
from tests.support.cli_inprocess import invoke_rag

SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")
# Questions that name an exact identifier. Pure vector search used to rank another
# passage first for the first two; since chunks carry their document title it finds
# them, and only the third still trips it (measured on the sample corpus, local MiniLM).
EXACT_IDS = {
    "What does DockPost fault code D-11 indicate?": "products/dockpost_dp7_installation.txt",
    "What does the VPN error QG-41 mean?": "it_helpdesk_guide.txt",
    "What is the list price of the Heron QH-640, and how much does a year of CareWing Plus "
    "for it cost?": "price_list_2025.pdf",
}


@pytest.mark.parametrize(
    ("version", "available"),
    [
        ("milvus_lite-3.2.2", True),
        ("v2.5.4", True),
        ("v2.6.0", True),
        ("v2.3.5", False),
        ("2.4.9", False),
        ("unknown", False),
    ],
)
def test_bm25_needs_milvus_lite_or_2_5(version: str, available: bool) -> None:
    reason = bm25_unavailable_reason(version)
    assert (reason is None) == available
    if reason:
        assert "2.5" in reason


@SESSION_LOOP
async def test_hybrid_finds_exact_identifiers_that_dense_ranks_lower(corpus: Corpus) -> None:
    store = corpus.env.store
    assert store.bm25_unavailable is None
    dense_first = []
    retriever = PassageRetriever(store=store, k=1, mode="hybrid")
    for question, gold in EXACT_IDS.items():
        hybrid = await retrieve(store, question, SearchOptions(k=1, mode="hybrid"))
        assert hybrid[0].source == gold, question
        # The retriever's sync path (the store's sync clients) finds the same passage.
        (document,) = await asyncio.to_thread(retriever.invoke, question)
        assert document.id == hybrid[0].document.metadata["pk"], question
        dense = await retrieve(store, question, SearchOptions(k=1, mode="dense"))
        dense_first.append(dense[0].source == gold)
    assert not all(dense_first), "the cases must be ones dense search gets wrong"


@SESSION_LOOP
@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
@pytest.mark.parametrize("ranker", ["rrf", "weighted"])
async def test_lexical_modes_return_cosine_scores_and_metadata(
    corpus: Corpus, mode: str, ranker: str
) -> None:
    store = corpus.env.store
    question = "How often does the Heron's emergency parachute need to be repacked?"
    dense = {
        h.document.metadata["pk"]: h.score
        for h in await retrieve(store, question, SearchOptions(k=30))
    }
    hits = await retrieve(store, question, SearchOptions(k=4, mode=mode, ranker=ranker))  # type: ignore[arg-type]
    assert len(hits) == 4
    for hit in hits:
        meta = hit.document.metadata
        assert "sparse" not in meta and "vector" not in meta
        assert meta["source"] and meta["file_hash"] and hit.document.page_content
        assert -1 <= hit.score <= 1
        if meta["pk"] in dense:  # the same cosine as the dense search reports
            assert hit.score == pytest.approx(dense[meta["pk"]], abs=1e-3)
    if mode == "bm25":  # a lexical match: every hit shares a word with the question
        words = {"heron", "emergency", "parachute", "repacked"}
        assert all(
            words & set(re.findall(r"[a-z]+", h.document.page_content.lower())) for h in hits
        )
        assert any("parachute" in h.document.page_content.lower() for h in hits)


@SESSION_LOOP
@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
async def test_source_filter_and_mmr_apply_in_lexical_modes(corpus: Corpus, mode: str) -> None:
    store = corpus.env.store
    question = "What is the maximum payload of the Wren QW-210?"
    only = ("price_list_2025.pdf",)
    hits = await retrieve(store, question, SearchOptions(k=3, mode=mode, sources=only))  # type: ignore[arg-type]
    assert hits and {h.source for h in hits} == set(only)
    injected = SearchOptions(k=3, mode=mode, sources=('x" or source != "',))  # type: ignore[arg-type]
    assert await retrieve(store, question, injected) == []
    diverse = await retrieve(store, question, SearchOptions(k=4, mode=mode, mmr=True, fetch_k=12))  # type: ignore[arg-type]
    assert len({h.document.metadata["pk"] for h in diverse}) == 4


def _identity(**changes: object) -> CollectionIdentity:
    settings = make_settings("unused.db", "unused")
    base = CollectionIdentity(embedding_identity(settings)[0], 384)
    return CollectionIdentity(**{**base.__dict__, **changes})  # type: ignore[arg-type]


@SESSION_LOOP
async def test_collection_without_bm25_falls_back_to_dense_and_says_so(
    open_env: OpenEnv, session_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = "no_bm25_field"
    client = MilvusClient(uri=session_db)
    try:
        if client.has_collection(name):
            client.drop_collection(name)
        _create_collection(client, name, _identity(bm25=False))
    finally:
        client.close()
    env = await open_env(collection=name)
    reason = env.store.bm25_unavailable
    assert reason and "--recreate" in reason
    folder = tmp_path_factory.mktemp("fallback")
    (folder / "note.md").write_text("# Parts\n\nThe spare rotor kit is part RK-7731.\n")
    await env.ingest(folder)
    question = "Which part is the spare rotor kit?"
    dense = await retrieve(env.store, question, SearchOptions(k=1))
    fallback = await retrieve(env.store, question, SearchOptions(k=1, mode="hybrid"))
    assert [h.document.metadata["pk"] for h in fallback] == [
        h.document.metadata["pk"] for h in dense
    ]
    blocking = await asyncio.to_thread(PassageRetriever(store=env.store, k=1).invoke, question)
    assert [d.id for d in blocking] == [h.document.metadata["pk"] for h in dense]
    hybrid = PassageRetriever(store=env.store, k=1, mode="hybrid")
    assert [d.id for d in await asyncio.to_thread(hybrid.invoke, question)] == [
        d.id for d in blocking
    ]


@SESSION_LOOP
async def test_old_schema_version_asks_for_a_rebuild(open_env: OpenEnv, session_db: str) -> None:
    name = "schema_v1"
    client = MilvusClient(uri=session_db)
    try:
        if client.has_collection(name):
            client.drop_collection(name)
        _create_collection(client, name, _identity(schema_version=1, bm25=False))
    finally:
        client.close()
    with pytest.raises(EmbeddingMismatch, match="--recreate"):
        await open_env(collection=name)


def test_cli_mode_option_and_fallback_note(
    tmp_path_factory: pytest.TempPathFactory, local_embeddings: LocalMiniLMEmbeddings
) -> None:
    """`rag search --mode hybrid` as the console script; the ingest before it and the
    refused mode run in-process (``invoke_rag``), sparing two process starts."""
    workdir = tmp_path_factory.mktemp("cli_modes")
    db = workdir / "m.db"
    client = MilvusClient(uri=str(db))
    try:
        _create_collection(client, "plain", _identity(bm25=False))
    finally:
        client.close()
        server_manager_instance.release_server(str(db))  # let the CLI open the file
    (workdir / "doc.md").write_text("# Codes\n\nFault D-99 means the hatch is stuck open.\n")
    env = {"RAG_MILVUS_URI": str(db), "RAG_COLLECTION": "plain"}
    here = {"cwd": workdir, "embeddings": local_embeddings, **env}
    assert invoke_rag("ingest", str(workdir / "doc.md"), **here).returncode == 0
    result = run_rag("search", "D-99", "--mode", "hybrid", cwd=workdir, **env)
    assert result.returncode == 0, result.stderr
    assert "hybrid search is unavailable" in result.stderr and "dense" in result.stderr
    assert "hatch is stuck" in result.stdout
    bad = invoke_rag("search", "D-99", "--mode", "fuzzy", **here)
    assert bad.returncode == 2 and "fuzzy" in bad.stderr
