"""Find the passages for a question with the store's async search methods."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from langchain_core.documents import Document

from rag.store import PRIMARY_FIELD, quote

if TYPE_CHECKING:
    from langchain_milvus import Milvus


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


def source_filter(sources: tuple[str, ...]) -> str | None:
    """A Milvus expression limiting results to some sources; values are always escaped."""
    if not sources:
        return None
    return "source in [" + ", ".join(quote(s) for s in sources) + "]"


async def retrieve(store: Milvus, question: str, options: SearchOptions) -> list[Hit]:
    """Top passages for a question, best first.

    MMR in langchain-milvus returns documents without scores, so the scored search
    over the same candidates runs concurrently and lends its scores to the MMR picks.
    """
    expr = source_filter(options.sources)
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
