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

``PassageRetriever`` is the same search as a LangChain ``BaseRetriever``, so it composes
in anyone's LCEL chain and shows up in LangChain tracing as a retriever run. Its sync
path runs the same requests through the store's *sync* clients: the async client is bound
to the event loop that first used it (pymilvus' ``AsyncConnectionManager`` keeps one
connection per loop and ``AsyncMilvusClient`` caches its handler), so running the async
search in a fresh ``asyncio.run`` fails with "Event loop is closed".
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever, LangSmithRetrieverParams
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from langchain_milvus import Milvus
from pydantic import TypeAdapter, model_validator
from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

from rag.choices import Ranker, SearchMode
from rag.embeddings import Batches
from rag.store.filters import all_of, sources_expr, visible_to
from rag.store.schema import (
    METADATA_FIELDS,
    PRIMARY_FIELD,
    SPARSE_FIELD,
    TEXT_FIELD,
    VECTOR_FIELD,
)

if TYPE_CHECKING:
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
    # Whose private rows the search may return besides the shared ones (an owner key,
    # rag.store.schema); "" = shared rows only. Set by the server from the session,
    # never from what a client sends.
    viewer: str = ""


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


def search_expr(options: SearchOptions) -> str:
    """The filter of every search: the rows ``viewer`` may see, within the chosen sources.

    Visibility is ANDed in server side on every path, so a source filter naming another
    owner's file matches none of its rows rather than trusting the client's list.
    """
    chosen = sources_expr(options.sources) if options.sources else None
    return all_of(visible_to(options.viewer), chosen)


async def retrieve(store: Milvus, question: str, options: SearchOptions) -> list[Hit]:
    """Top passages for a question, best first."""
    expr = search_expr(options)
    mode = effective_mode(store, options.mode)
    if mode == "dense":
        return await _dense(store, question, options, expr)
    return await _lexical(store, question, options, expr, mode)


def _retrieve_blocking(store: Milvus, question: str, options: SearchOptions) -> list[Hit]:
    """``retrieve`` through the store's sync clients: for sync code and worker threads.

    The same requests and the same scoring as the async path (shared helpers below);
    only the I/O differs, and the two MMR searches of the dense path run one after the
    other instead of concurrently.
    """
    expr = search_expr(options)
    mode = effective_mode(store, options.mode)
    if mode == "dense":
        if not options.mmr:
            scored = store.similarity_search_with_score(question, k=options.k, expr=expr)
            return [Hit(doc, float(score)) for doc, score in scored]
        fetch_k = _fetch_k(options)
        picked = store.max_marginal_relevance_search(
            question, k=options.k, fetch_k=fetch_k, expr=expr
        )
        return _lend_scores(
            picked, store.similarity_search_with_score(question, k=fetch_k, expr=expr)
        )
    query_vector = store.embeddings.embed_query(question)
    search = _lexical_search(store, question, options, expr, mode, query_vector)
    client = store.client
    results = (client.hybrid_search if search.hybrid else client.search)(**search.arguments)
    documents = _documents(results)
    if not documents:
        return []
    rows = client.get(store.collection_name, ids=_ids(documents), output_fields=[VECTOR_FIELD])
    return _rank(documents, rows, query_vector, options)


def _fetch_k(options: SearchOptions) -> int:
    return max(options.fetch_k, options.k)


def _lend_scores(picked: list[Document], scored: list[tuple[Document, float]]) -> list[Hit]:
    """MMR picks with the scores the plain search gave the same passages."""
    scores = {doc.metadata.get(PRIMARY_FIELD): float(score) for doc, score in scored}
    return [Hit(doc, scores.get(doc.metadata.get(PRIMARY_FIELD), 0.0)) for doc in picked]


async def _dense(store: Milvus, question: str, options: SearchOptions, expr: str) -> list[Hit]:
    """Vector search: the plain one batched with other chats' (``_dense_searches``), MMR
    through langchain-milvus.

    MMR in langchain-milvus returns documents without scores, so the scored search
    over the same candidates runs concurrently and lends its scores to the MMR picks.
    """
    if not options.mmr:
        if store.col is None:  # as langchain-milvus answers a missing collection
            return []
        vector = await store.embeddings.aembed_query(question)
        return await _dense_searches(store).submit(_DenseSearch(vector, expr, options.k))
    fetch_k = _fetch_k(options)
    picked, scored = await asyncio.gather(
        store.amax_marginal_relevance_search(question, k=options.k, fetch_k=fetch_k, expr=expr),
        store.asimilarity_search_with_score(question, k=fetch_k, expr=expr),
    )
    return _lend_scores(picked, scored)


@dataclass(frozen=True)
class _DenseSearch:
    vector: list[float]
    expr: str
    k: int


# Per store, the dense searches asked for in one loop iteration: those with the same filter
# and k go to Milvus as one request with several query vectors (pymilvus' ``data`` takes a
# list; ``results[i]`` are the hits of ``data[i]``). Chats arriving together get their query
# vectors together (``rag.embeddings.Batches``), and each search is a gRPC call costing this
# process about a millisecond of CPU under one GIL. The same request langchain-milvus 0.4
# sends for one vector (``_acollection_search``): the cosine metric of the collection's
# index, the store's output fields, and its timeout.
_DENSE_SEARCHES: weakref.WeakKeyDictionary[Milvus, Batches[_DenseSearch, list[Hit]]] = (
    weakref.WeakKeyDictionary()
)


def _dense_searches(store: Milvus) -> Batches[_DenseSearch, list[Hit]]:
    batches = _DENSE_SEARCHES.get(store)
    if batches is None:
        owner = weakref.ref(store)  # the batches must not keep their store alive

        async def search(asked: list[_DenseSearch]) -> list[list[Hit]]:
            alive = owner()
            if alive is None:  # pragma: no cover - a store is alive while it is searched
                raise RuntimeError("the store was closed")
            return await _search_together(alive, asked)

        batches = _DENSE_SEARCHES[store] = Batches(search)
    return batches


async def _search_together(store: Milvus, asked: list[_DenseSearch]) -> list[list[Hit]]:
    """One request per (filter, k) among ``asked``; the hits of each search, in order."""
    groups: dict[tuple[str, int], list[int]] = {}
    for index, search in enumerate(asked):
        groups.setdefault((search.expr, search.k), []).append(index)

    async def one(expr: str, k: int) -> Any:
        return await store.aclient.search(
            store.collection_name,
            data=[asked[i].vector for i in groups[expr, k]],
            anns_field=VECTOR_FIELD,
            search_params=COSINE_PARAMS,
            limit=k,
            filter=expr,
            output_fields=OUTPUT_FIELDS,
            timeout=store.timeout,
        )

    found = await asyncio.gather(*(one(expr, k) for expr, k in groups))
    hits: list[list[Hit]] = [[] for _ in asked]
    for indexes, results in zip(groups.values(), found, strict=True):
        for index, row in zip(indexes, results, strict=True):
            hits[index] = [Hit(_document(hit), float(hit["distance"])) for hit in row]
    return hits


@dataclass(frozen=True)
class _LexicalSearch:
    """One BM25 or hybrid request; the async and the sync client take the same arguments."""

    hybrid: bool
    arguments: dict[str, Any]


def _lexical_search(
    store: Milvus,
    question: str,
    options: SearchOptions,
    expr: str,
    mode: SearchMode,
    query_vector: list[float],
) -> _LexicalSearch:
    limit = _fetch_k(options) if options.mmr else options.k
    if mode == "bm25":
        return _LexicalSearch(
            hybrid=False,
            arguments={
                "collection_name": store.collection_name,
                "data": [question],
                "anns_field": SPARSE_FIELD,
                "search_params": BM25_PARAMS,
                "limit": limit,
                "filter": expr,
                "output_fields": OUTPUT_FIELDS,
            },
        )
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
    return _LexicalSearch(
        hybrid=True,
        arguments={
            "collection_name": store.collection_name,
            "reqs": requests,
            "ranker": ranker,
            "limit": limit,
            "output_fields": OUTPUT_FIELDS,
        },
    )


async def _lexical(
    store: Milvus, question: str, options: SearchOptions, expr: str, mode: SearchMode
) -> list[Hit]:
    """BM25 or hybrid search, then cosine scores (and MMR) from the hits' own vectors."""
    query_vector = await store.embeddings.aembed_query(question)
    search = _lexical_search(store, question, options, expr, mode, query_vector)
    client = store.aclient
    results = await (client.hybrid_search if search.hybrid else client.search)(**search.arguments)
    documents = _documents(results)
    if not documents:
        return []
    rows = await client.get(
        store.collection_name, ids=_ids(documents), output_fields=[VECTOR_FIELD]
    )
    return _rank(documents, rows, query_vector, options)


def _documents(results: Any) -> list[Document]:
    return [_document(hit) for hit in (results[0] if results else [])]


def _document(hit: dict[str, Any]) -> Document:
    entity = dict(hit.get("entity") or {})
    entity.setdefault(PRIMARY_FIELD, hit.get("id"))
    text = str(entity.pop(TEXT_FIELD, ""))
    return Document(page_content=text, metadata=entity)


def _ids(documents: list[Document]) -> list[str]:
    return [str(d.metadata[PRIMARY_FIELD]) for d in documents]


def _rank(
    documents: list[Document],
    rows: list[dict[str, Any]],
    query_vector: list[float],
    options: SearchOptions,
) -> list[Hit]:
    """Cosine scores from the hits' stored vectors, in search order or MMR order."""
    vectors = {str(row[PRIMARY_FIELD]): list(row[VECTOR_FIELD]) for row in rows}
    matrix = np.array([vectors[pk] for pk in _ids(documents)])
    query = np.array(query_vector)
    cosines = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query) + 1e-12)
    order = (
        maximal_marginal_relevance(query, matrix.tolist(), k=options.k)
        if options.mmr
        else range(len(documents))
    )
    return [Hit(documents[i], float(cosines[i])) for i in order]


# --------------------------------------------------------------------------------------------
# The same search as a LangChain retriever
# --------------------------------------------------------------------------------------------

SCORE_KEY = "score"  # the metadata key of a retrieved Document's cosine score
OPTION_NAMES = frozenset(f.name for f in fields(SearchOptions))
# A plain dataclass does not check its Literal fields; pydantic does, from a dict (it
# passes a dataclass *instance* through unchecked: revalidate_instances is "never").
_OPTIONS_ADAPTER = TypeAdapter(SearchOptions)


def with_overrides(options: SearchOptions, overrides: dict[str, Any]) -> SearchOptions:
    """``options`` with some fields replaced, checked (an unknown name is a TypeError)."""
    unknown = set(overrides) - OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unknown search option(s) {sorted(unknown)}; expected some of {sorted(OPTION_NAMES)}"
        )
    if not overrides:
        return options
    return _OPTIONS_ADAPTER.validate_python({**asdict(options), **overrides})


def hit_document(hit: Hit) -> Document:
    """A hit as a Document of its own: the score in ``metadata["score"]``, the pk as id."""
    pk = hit.document.metadata.get(PRIMARY_FIELD)
    return Document(
        page_content=hit.document.page_content,
        metadata={**hit.document.metadata, SCORE_KEY: hit.score},
        id=str(pk) if pk is not None else None,
    )


class PassageRetriever(BaseRetriever):
    """This app's search (dense, BM25 or hybrid; MMR; source filter) as a retriever.

    Every ``SearchOptions`` field can be given to the constructor, over ``options``
    (``PassageRetriever(store=store, options=search_options(settings), k=3)``), or per
    call (``retriever.invoke(question, k=1, mode="bm25")``). Documents come back best
    first with their cosine score in ``metadata["score"]``.
    """

    # BaseRetriever's model config already has arbitrary_types_allowed, which a Milvus
    # store field needs (it is not a pydantic type); pydantic then checks isinstance.
    store: Milvus
    options: SearchOptions = SearchOptions()

    @model_validator(mode="before")
    @classmethod
    def _fold_search_fields(cls, data: Any) -> Any:
        """Top-level search fields (``k=3``, as the LangChain standard tests pass it)."""
        if not isinstance(data, dict) or not OPTION_NAMES & data.keys():
            return data
        rest = {name: value for name, value in data.items() if name not in OPTION_NAMES}
        overrides = {name: data[name] for name in OPTION_NAMES & data.keys()}
        base = rest.get("options", SearchOptions())
        if not isinstance(base, SearchOptions):  # a dict, say, from a config file
            base = _OPTIONS_ADAPTER.validate_python(base)
        rest["options"] = with_overrides(base, overrides)
        return rest

    def _get_ls_params(self, **kwargs: Any) -> LangSmithRetrieverParams:
        """What LangChain tracing records about the retriever, as VectorStoreRetriever does."""
        params = super()._get_ls_params(**kwargs)
        params["ls_vector_store_provider"] = type(self.store).__name__
        if self.store.embeddings is not None:
            params["ls_embedding_provider"] = type(self.store.embeddings).__name__
        return params

    def _options(self, overrides: dict[str, Any]) -> SearchOptions:
        # BaseRetriever.invoke reads `verbose` from the call's kwargs for its callback
        # manager and passes every kwarg on: it is not a search option.
        overrides.pop("verbose", None)
        return with_overrides(self.options, overrides)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        hits = _retrieve_blocking(self.store, query, self._options(overrides))
        return [hit_document(hit) for hit in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        hits = await retrieve(self.store, query, self._options(overrides))
        return [hit_document(hit) for hit in hits]
