"""What is in a collection, file by file, and taking files out of it.

Read from Milvus itself, never from a side file that could disagree with the collection.
Every stored file version has one ``chunk_index == 0`` row carrying the file's source,
hash, size, chunk count and ingest time, so the *catalog* (every stored file version) is
one scan of those rows. Each row also records its owner (``rag.store.schema``): a
file is one (owner, source) pair, so alice's upload and a shared file of the same name
are listed, counted and removed apart. It is kept in the process, per collection, because the chat
lists the documents on every chat start and after every upload: ``invalidate`` drops it
after anything that writes or deletes rows (an ingest, an upload, ``remove_sources``),
and an entry older than ``MAX_AGE`` is read again, for writes made by another process.

pymilvus' ``AsyncMilvusClient`` has no ``query_iterator`` (3.0.2: only ``MilvusClient``
and the ORM ``Collection`` have one), so scans run the sync client's iterator in a
worker thread. The iterator pages by primary key (``pk > last`` on rows the server
returns in key order) at one snapshot time; checked here on Milvus Lite 3.2.2 and on
the Milvus 2.3.5 standalone.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rag.store import records
from rag.store.filters import first_chunks_expr, owned_by, sources_expr
from rag.store.schema import SHARED

if TYPE_CHECKING:
    from collections.abc import Sequence

    from langchain_milvus import Milvus
    from pymilvus import MilvusClient

# Rows per round trip: pymilvus' MAX_BATCH_SIZE (client/constants.py), the most a query
# may return. The scans read a few short fields, so a full page stays small.
PAGE = 16_384
# How long a catalog read by this process is trusted when nothing here invalidated it:
# long enough that chat starts share one scan, short enough to see another process'
# ingest within a minute.
MAX_AGE = 60.0
VERSION_FIELDS = ["source", "chunk_count", "file_hash", "file_size", "ingested_at", "owner"]
DELETE_BATCH = 100  # sources per delete expression
T = TypeVar("T")


class _NoLiteSessionTs(logging.Filter):
    """Drop pymilvus' warning that the server sent no snapshot time for an iterator.

    Milvus Lite and Milvus 2.3 never send one, so pymilvus warns on every scan and uses
    the client's clock instead (query_iterator.py ``__setup_ts_by_request``); on this
    app's Strong-consistency collection that clock time still covers every earlier write.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_NoLiteSessionTs())


@dataclass(frozen=True, order=True)
class StoredVersion:
    """One stored version of a file, as its first chunk row records it."""

    source: str
    ingested_at: str
    file_hash: str
    chunk_count: int
    file_size: int
    owner: str = SHARED


@dataclass(frozen=True)
class SourceInfo:
    """One ingested file (one owner's rows of one source) as the collection records it."""

    source: str
    chunks: int  # rows in the collection
    expected_chunks: int  # chunk_count recorded at ingest; differs while incomplete
    file_hash: str
    file_size: int
    ingested_at: str
    owner: str = SHARED  # who may see it: SHARED, or one owner key

    @property
    def complete(self) -> bool:
        return self.chunks == self.expected_chunks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"complete": self.complete}


# --- scanning ----------------------------------------------------------------------------


def _scan(
    client: MilvusClient, collection: str, expr: str, fields: list[str]
) -> Iterator[dict[str, Any]]:
    """Blocking: every row matching ``expr``, page by page through the query iterator."""
    pages = client.query_iterator(collection, batch_size=PAGE, filter=expr, output_fields=fields)
    try:
        while page := pages.next():
            yield from page
    finally:
        pages.close()


async def _in_thread(
    store: Milvus, expr: str, fields: list[str], fold: Callable[[Iterator[dict[str, Any]]], T]
) -> T:
    """``fold`` over a scan, off the event loop (the sync client blocks)."""
    return await asyncio.to_thread(
        lambda: fold(_scan(store.client, store.collection_name, expr, fields))
    )


def _version(row: dict[str, Any]) -> StoredVersion:
    return StoredVersion(
        source=str(row["source"]),
        ingested_at=str(row.get("ingested_at") or ""),
        file_hash=str(row.get("file_hash") or ""),
        chunk_count=int(row.get("chunk_count") or 0),
        file_size=int(row.get("file_size") or 0),
        owner=str(row.get("owner") or SHARED),
    )


# --- the cached catalog ------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    versions: tuple[StoredVersion, ...]
    read_at: float


Key = tuple[str, str, str]
_catalogs: dict[Key, _Entry] = {}
# Bumped by `invalidate`: a scan that started before an invalidation must not store
# what it read, or an ingest finishing mid-scan would be forgotten.
_generations: Counter[Key] = Counter()


def _key(store: Milvus) -> Key:
    """Where the collection lives. langchain-milvus keeps the arguments it connected with
    (``_connection_args``, vectorstores/milvus.py 0.4.0), so two stores opened on one
    collection share an entry, and one name in two databases does not."""
    args = getattr(store, "_connection_args", None) or {}
    return (str(args.get("uri", "")), str(args.get("db_name") or ""), store.collection_name)


def invalidate(store: Milvus) -> None:
    """Forget the catalog of ``store``'s collection: call after writing or deleting rows."""
    key = _key(store)
    _catalogs.pop(key, None)
    _generations[key] += 1


async def catalog(store: Milvus, *, fresh: bool = False) -> tuple[StoredVersion, ...]:
    """Every stored file version, sorted by source then ingest time; cached per collection."""
    key = _key(store)
    entry = _catalogs.get(key)
    if entry is not None and not fresh and time.monotonic() - entry.read_at < MAX_AGE:
        return entry.versions
    generation = _generations[key]
    versions = tuple(
        sorted(
            await _in_thread(
                store, first_chunks_expr(), VERSION_FIELDS, lambda rows: [_version(r) for r in rows]
            )
        )
    )
    if _generations[key] == generation:
        _catalogs[key] = _Entry(versions, time.monotonic())
    return versions


async def source_names(store: Milvus, viewer: str = SHARED) -> list[str]:
    """The names of the stored files ``viewer`` may see, sorted (the chat's document
    filter and welcome page): the shared ones and, for an owner key, that owner's own.

    Picked here from the cached catalog, so every chat start shares one scan; what a
    search returns is limited by Milvus itself (``rag.retrieval``), not by this list.
    """
    visible = {SHARED, viewer}
    return sorted({v.source for v in await catalog(store) if v.owner in visible})


# --- listing and removing ----------------------------------------------------------------


async def row_counts(store: Milvus, owner: str | None = None) -> Counter[str]:
    """Rows per source (of one owner, when given), from one pass over the ``source`` field.

    Milvus 2.3 has no grouped ``count(*)``, so the choice is one ``count(*)`` query per
    source (what this module did before: N round trips, N = files) or one scan of every
    row's ``source`` (rows / PAGE round trips, each row a key and a path). The scan is
    exact and costs a handful of round trips even for a large collection.
    """
    expr = "" if owner is None else owned_by(owner)
    return await _in_thread(
        store, expr, ["source"], lambda rows: Counter(r["source"] for r in rows)
    )


async def _owned_row_counts(store: Milvus, owner: str | None) -> Counter[tuple[str, str]]:
    """Rows per (source, owner): ``row_counts`` for a listing that tells owners apart."""
    expr = "" if owner is None else owned_by(owner)
    return await _in_thread(
        store,
        expr,
        ["source", "owner"],
        lambda rows: Counter((str(r["source"]), str(r.get("owner") or SHARED)) for r in rows),
    )


async def list_sources(store: Milvus, owner: str | None = None) -> list[SourceInfo]:
    """Every ingested file with its owner (only ``owner``'s, when given), sorted by name
    then owner: two scans, whatever the number of files.

    The catalog (read fresh, and cached for the chat) gives each file's expected chunk
    count, hash, size and time; ``row_counts`` gives the rows actually there. A file is
    complete when they agree. A file with two versions (an update under way or
    interrupted) reports the newest version and all its rows, so it shows as
    incomplete; a file whose first chunk is missing still appears, with nothing
    expected, so ``rag remove`` can clear it.
    """
    versions, counts = await asyncio.gather(
        catalog(store, fresh=True), _owned_row_counts(store, owner)
    )
    # Sorted by time within a source, so the last one wins.
    newest = {(v.source, v.owner): v for v in versions if owner is None or v.owner == owner}
    found = []
    for source, source_owner in sorted(counts.keys() | newest.keys()):
        version = newest.get((source, source_owner))
        found.append(
            SourceInfo(
                source=source,
                chunks=counts.get((source, source_owner), 0),
                expected_chunks=version.chunk_count if version else 0,
                file_hash=version.file_hash if version else "",
                file_size=version.file_size if version else 0,
                ingested_at=version.ingested_at if version else "",
                owner=source_owner,
            )
        )
    return found


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
    store: Milvus,
    patterns: Sequence[str],
    *,
    owner: str | None = None,
    dry_run: bool = False,
) -> Removal:
    """Delete every chunk of the sources matching ``patterns``.

    Without ``owner``, every owner's rows of those sources go (what ``rag remove`` always
    did); with it, only that owner's, and no patterns at all means every file it owns.
    The patterns are matched here, in Python, against the source names Milvus
    returned; the delete expression only ever holds those names (and the owner),
    escaped, so no user text reaches Milvus as an expression.
    """
    listed = await list_sources(store, owner)
    if owner is not None and not patterns:
        found = listed
    else:
        found = [s for s in listed if any(matches(s.source, p) for p in patterns)]
    rows = sum(s.chunks for s in found)
    if found and not dry_run:
        names = sorted({s.source for s in found})
        try:
            for start in range(0, len(names), DELETE_BATCH):
                batch = names[start : start + DELETE_BATCH]
                await records.delete_where(store, sources_expr(batch, owner))
        finally:
            invalidate(store)  # even a partial delete changed the collection
    return Removal(found, rows, dry_run)
