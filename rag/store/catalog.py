"""What is in a collection, file by file, and taking files out of it.

Read from Milvus itself (every chunk row carries its file's hash, size, chunk count
and ingest time), never from a side file that could disagree with the collection.
"""

from __future__ import annotations

import asyncio
import fnmatch
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rag.store import records
from rag.store.filters import source_expr, sources_expr

if TYPE_CHECKING:
    from collections.abc import Sequence

    from langchain_milvus import Milvus

# Concurrent per-source queries: enough to hide round trips, few enough for Lite.
LOOKUPS = 8


@dataclass(frozen=True)
class SourceInfo:
    """One ingested file as the collection records it."""

    source: str
    chunks: int  # rows in the collection
    expected_chunks: int  # chunk_count recorded at ingest; differs while incomplete
    file_hash: str
    file_size: int
    ingested_at: str

    @property
    def complete(self) -> bool:
        return self.chunks == self.expected_chunks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"complete": self.complete}


async def _describe(store: Milvus, source: str) -> SourceInfo:
    expr = source_expr(source)
    rows, first = await asyncio.gather(
        records.count(store, expr),
        store.aclient.query(
            store.collection_name,
            filter=expr,
            output_fields=["chunk_count", "file_hash", "file_size", "ingested_at"],
            limit=1,
        ),
    )
    meta = first[0] if first else {}
    return SourceInfo(
        source=source,
        chunks=rows,
        expected_chunks=int(meta.get("chunk_count") or 0),
        file_hash=str(meta.get("file_hash") or ""),
        file_size=int(meta.get("file_size") or 0),
        ingested_at=str(meta.get("ingested_at") or ""),
    )


async def list_sources(store: Milvus) -> list[SourceInfo]:
    """Every ingested file, sorted by name."""
    sources = sorted(await records.stored_sources(store))
    gate = asyncio.Semaphore(LOOKUPS)

    async def one(source: str) -> SourceInfo:
        async with gate:
            return await _describe(store, source)

    return list(await asyncio.gather(*(one(s) for s in sources)))


def matches(source: str, pattern: str) -> bool:
    """A stored source matches a path, a folder (prefix) or a glob like ``*.pdf``."""
    pattern = pattern.strip().removeprefix("./")
    if not pattern:
        return False
    if source == pattern or source.startswith(pattern.rstrip("/") + "/"):
        return True
    name = source.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(source, pattern) or fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class Removal:
    sources: list[SourceInfo]
    rows: int  # rows deleted (or that would be, on a dry run)
    dry_run: bool


async def remove_sources(
    store: Milvus, patterns: Sequence[str], *, dry_run: bool = False
) -> Removal:
    """Delete every chunk of the sources matching ``patterns``.

    The patterns are matched here, in Python, against the source names Milvus
    returned; the delete expression only ever holds those names, escaped, so no
    user text reaches Milvus as an expression.
    """
    found = [s for s in await list_sources(store) if any(matches(s.source, p) for p in patterns)]
    rows = sum(s.chunks for s in found)
    if found and not dry_run:
        names = [s.source for s in found]
        for start in range(0, len(names), 100):
            await records.delete_where(store, sources_expr(names[start : start + 100]))
    return Removal(found, rows, dry_run)
