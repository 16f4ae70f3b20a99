"""Find the passages for a question with the store's async search methods.

Three modes over the same collection:
- ``dense``: vector search through langchain-milvus (``asimilarity_search_with_score``,
  ``amax_marginal_relevance_search``) — the default;
- ``bm25``: Milvus' built-in BM25 full-text search on the sparse field;
- ``hybrid``: both at once, fused by Milvus (RRF or weighted ranker).

BM25 and hybrid go straight to pymilvus' ``AsyncMilvusClient`` (the one langchain-milvus
holds): langchain-milvus 0.4.0 embeds the query with the *sync* ``embed_query`` inside
its async hybrid search (``_acollection_hybrid_search``), which would block the event
loop, and it cannot search only the sparse field of a dense + sparse collection.

Every hit's ``score`` is its cosine similarity to the question, whatever the mode,
so the relevance floor means the same thing in all of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

from rag.choices import Ranker, SearchMode
from rag.store.filters import sources_expr
from rag.store.schema import (
    METADATA_FIELDS,
    PRIMARY_FIELD,
    SPARSE_FIELD,
    TEXT_FIELD,
    VECTOR_FIELD,
)

if TYPE_CHECKING:
    from langchain_milvus import Milvus

    from rag.config import Settings

log = logging.getLogger(__name__)

OUTPUT_FIELDS = [PRIMARY_FIELD, TEXT_FIELD, *METADATA_FIELDS]
# The constant of reciprocal rank fusion (score = sum of 1 / (k + rank)). The paper's 60
# suits fusing lists a thousand deep; with the 20 candidates per side fused here it lets
# a chunk ranked 15th by both sides beat the top dense hit that BM25 does not return at
# all. A small k trusts each side's top hits: on the gold set k = 1, 3 or 5 beat 60 at
# every chunk size tried (800 to 1500); at 800, k = 3 took recall@5 from 0.94 to 0.96.
RRF_K = 3
COSINE_PARAMS: dict[str, Any] = {"metric_type": "COSINE", "params": {}}
# No drop_ratio_search: Milvus Lite accepts only 0 there (see the shared notes).
BM25_PARAMS: dict[str, Any] = {"metric_type": "BM25", "params": {}}


@dataclass(frozen=True)
class Hit:
    """A retrieved passage and its cosine score (higher is closer)."""

    document: Document
    score: float

    @property
    def source(self) -> str:
        return str(self.document.metadata.get("source", ""))

    @property
    def page(self) -> int | None:
        return int(self.document.metadata.get("page") or 0) or None

    def label(self) -> str:
        return f"{self.source}, page {self.page}" if self.page else self.source


@dataclass(frozen=True)
class SearchOptions:
    k: int = 4
    mmr: bool = False
    fetch_k: int = 20
    sources: tuple[str, ...] = ()
    mode: SearchMode = "dense"
    ranker: Ranker = "rrf"
    dense_weight: float = 0.6
    rrf_k: int = RRF_K


def search_options(settings: Settings) -> SearchOptions:
    """The configured defaults; the CLI and the chat settings override per question."""
    return SearchOptions(
        k=settings.top_k,
        mmr=settings.mmr,
        fetch_k=settings.fetch_k,
        mode=settings.search_mode,
        ranker=settings.hybrid_ranker,
        dense_weight=settings.hybrid_dense_weight,
        rrf_k=settings.hybrid_rrf_k,
    )


def effective_mode(store: Milvus, mode: SearchMode) -> SearchMode:
    """The mode that will actually run: dense when this store cannot do BM25.

    Falling back beats failing a user's question; the reason is logged here and
    shown by the CLI and the chat (``bm25_unavailable`` on the store).
    """
    reason = getattr(store, "bm25_unavailable", None)
    if mode != "dense" and reason:
        log.info("%s search unavailable (%s): using dense search", mode, reason)
        return "dense"
    return mode


async def retrieve(store: Milvus, question: str, options: SearchOptions) -> list[Hit]:
    """Top passages for a question, best first."""
    expr = sources_expr(options.sources) if options.sources else None
    mode = effective_mode(store, options.mode)
    if mode == "dense":
        return await _dense(store, question, options, expr)
    return await _lexical(store, question, options, expr, mode)


async def _dense(
    store: Milvus, question: str, options: SearchOptions, expr: str | None
) -> list[Hit]:
    """Vector search through langchain-milvus.

    MMR in langchain-milvus returns documents without scores, so the scored search
    over the same candidates runs concurrently and lends its scores to the MMR picks.
    """
    if not options.mmr:
        scored = await store.asimilarity_search_with_score(question, k=options.k, expr=expr)
        return [Hit(doc, float(score)) for doc, score in scored]
    fetch_k = max(options.fetch_k, options.k)
    picked, scored = await asyncio.gather(
        store.amax_marginal_relevance_search(question, k=options.k, fetch_k=fetch_k, expr=expr),
        store.asimilarity_search_with_score(question, k=fetch_k, expr=expr),
    )
    scores = {doc.metadata.get(PRIMARY_FIELD): float(score) for doc, score in scored}
    return [Hit(doc, scores.get(doc.metadata.get(PRIMARY_FIELD), 0.0)) for doc in picked]


async def _lexical(
    store: Milvus, question: str, options: SearchOptions, expr: str | None, mode: SearchMode
) -> list[Hit]:
    """BM25 or hybrid search, then cosine scores (and MMR) from the hits' own vectors."""
    limit = max(options.fetch_k, options.k) if options.mmr else options.k
    query_vector = await store.embeddings.aembed_query(question)
    if mode == "bm25":
        results = await store.aclient.search(
            store.collection_name,
            data=[question],
            anns_field=SPARSE_FIELD,
            search_params=BM25_PARAMS,
            limit=limit,
            filter=expr,
            output_fields=OUTPUT_FIELDS,
        )
    else:
        # Each side brings its own candidates; fusion then picks the best `limit`.
        candidates = max(options.fetch_k, limit)
        requests = [
            AnnSearchRequest([query_vector], VECTOR_FIELD, COSINE_PARAMS, candidates, expr),
            AnnSearchRequest([question], SPARSE_FIELD, BM25_PARAMS, candidates, expr),
        ]
        ranker: Any = (
            RRFRanker(options.rrf_k)
            if options.ranker == "rrf"
            else WeightedRanker(options.dense_weight, 1 - options.dense_weight)
        )
        results = await store.aclient.hybrid_search(
            store.collection_name,
            reqs=requests,
            ranker=ranker,
            limit=limit,
            output_fields=OUTPUT_FIELDS,
        )
    documents = [_document(hit) for hit in (results[0] if results else [])]
    if not documents:
        return []
    vectors = await _vectors(store, [str(d.metadata[PRIMARY_FIELD]) for d in documents])
    matrix = np.array([vectors[str(d.metadata[PRIMARY_FIELD])] for d in documents])
    query = np.array(query_vector)
    cosines = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query) + 1e-12)
    order = (
        maximal_marginal_relevance(query, matrix.tolist(), k=options.k)
        if options.mmr
        else range(len(documents))
    )
    return [Hit(documents[i], float(cosines[i])) for i in order]


def _document(hit: dict[str, Any]) -> Document:
    entity = dict(hit.get("entity") or {})
    entity.setdefault(PRIMARY_FIELD, hit.get("id"))
    text = str(entity.pop(TEXT_FIELD, ""))
    return Document(page_content=text, metadata=entity)


async def _vectors(store: Milvus, ids: list[str]) -> dict[str, list[float]]:
    rows = await store.aclient.get(store.collection_name, ids=ids, output_fields=[VECTOR_FIELD])
    return {str(row[PRIMARY_FIELD]): list(row[VECTOR_FIELD]) for row in rows}
