"""What each file of a run needs, decided from what the collection already holds.

The collection is its own record (``rag.store.records``): a source is complete exactly when
it holds ``chunk_count`` rows of its file's current hash and none of another version. So a
discovered file is skipped when complete, written when new, and, when another version is
stored, written beside it with the old rows dropped only once the new ones are all in (a
crash mid-update leaves the file searchable). Rows of this same version left by an
interrupted run are cleared first and the version is written whole. Sources the folder no
longer has are removed, within the run's scope only; for one of several workers
(``ingest.shard``) that scope is its own partition, so no worker removes another's files.

A run writes for one owner (``rag.store.schema``: shared for a folder, one owner key for
a chat upload) and every query and clean-up here is limited to that owner's rows, so
alice re-ingesting a file never touches bob's rows, or the shared ones, of the same name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ingest.discover import wanted
from ingest.shard import Shard
from rag.store import catalog, records
from rag.store.filters import source_expr, version_expr
from rag.store.records import StoredFile
from rag.store.schema import SHARED

if TYPE_CHECKING:
    from langchain_milvus import Milvus

T = TypeVar("T")
UPLOADS_PREFIX = "uploads/"  # sources added through the chat UI
NOT_STORED = StoredFile(0, 0, None)
# How a plan's queries are run: `ingest.retry.Retrier` in a run, a plain await in tests.
Call = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class FilePlan:
    """What one file needs, given its current hash and how its source stands."""

    source: str
    digest: str
    stored: StoredFile
    owner: str = SHARED  # whose rows of the source this plan reads and deletes

    @property
    def unchanged(self) -> bool:
        """Every chunk of this version is stored and nothing else is: nothing to do."""
        return self.stored.complete

    @property
    def status(self) -> Literal["added", "updated"]:
        return "updated" if self.stored.rows > self.stored.current_rows else "added"

    def clear_first(self, chunks: int) -> str | None:
        """The rows to delete before this file's ``chunks`` are written, if any.

        An emptied file loses all its rows (they no longer say anything it says); otherwise
        only leftovers of this same version, which is then rewritten whole.
        """
        if chunks == 0:
            return source_expr(self.source, self.owner) if self.stored.rows else None
        if self.stored.current_rows:
            return version_expr(self.source, self.digest, same=True, owner=self.owner)
        return None

    @property
    def replaced(self) -> str | None:
        """The rows to delete once this version is complete: the version it replaces."""
        if self.status == "updated":
            return version_expr(self.source, self.digest, same=False, owner=self.owner)
        return None


@dataclass(frozen=True)
class Scope:
    """The stored sources a run answers for, so it removes nothing it was not asked about.

    Sources under its prefix that its include/exclude globs select (``--include "*.pdf"``
    must not remove the Markdown files), and never files added through the chat (under
    ``uploads/``) from a folder run. A worker given a ``shard`` answers for the sources
    whose names hash to it, whether the folder still has them or not.
    """

    prefix: str = ""
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    shard: Shard | None = None

    def owns(self, source: str) -> bool:
        """In this worker's partition (every source is, without a shard)."""
        return self.shard is None or self.shard.owns(source)

    def covers(self, source: str) -> bool:
        if not self.owns(source):
            return False
        if not source.startswith(self.prefix):
            return False
        if not self.prefix and source.startswith(UPLOADS_PREFIX):
            return False
        return wanted(source[len(self.prefix) :], self.include, self.exclude)


class Planner:
    """Plans the files of one run against the collection of ``store``.

    ``known`` are the sources with rows when a folder run started, read once: a file not
    among them needs no per-file look-up, which dominated runs over thousands of new files.
    None (single files, chat uploads): every file is looked up. They are read from every
    row (``catalog.row_counts``), not from the catalog of first chunks: an interrupted run
    may have written later chunks of a file and not its first, and those rows must be
    found, to be cleared before the file is written again or removed with it. Only
    ``owner``'s rows count: another owner's file of the same name is not this run's.
    """

    def __init__(
        self, store: Milvus, call: Call, known: set[str] | None, owner: str = SHARED
    ) -> None:
        self.store, self.call, self.known, self.owner = store, call, known, owner

    @classmethod
    async def start(
        cls, store: Milvus, call: Call, *, whole_folder: bool, owner: str = SHARED
    ) -> Planner:
        known = set(await call(catalog.row_counts, store, owner)) if whole_folder else None
        return cls(store, call, known, owner)

    def is_new(self, source: str) -> bool:
        """Known without a query to have no rows (so its plan needs no look-up)."""
        return self.known is not None and source not in self.known

    async def plan(self, source: str, digest: str) -> FilePlan:
        if self.is_new(source):
            return FilePlan(source, digest, NOT_STORED, self.owner)
        stored = await self.call(records.stored_file, self.store, source, digest, self.owner)
        return FilePlan(source, digest, stored, self.owner)

    def missing(self, present: set[str], scope: Scope) -> list[str]:
        """Sources to remove: stored at the start, gone from the folder, within ``scope``.

        Every source this run writes is in ``present``, so the start-of-run list is all that
        can be missing. Nothing at all when the folder turned out empty, which is more often
        a wrong path than intent, nor on a run that did not read the list (single files).
        ``known`` holds only this run's owner's sources, so no other owner's file is missing.
        """
        if not present or self.known is None:
            return []
        return sorted(s for s in self.known - present if scope.covers(s))
