"""What is already ingested, read from Milvus itself.

``langchain_core.indexing.aindex`` with a RecordManager would also skip unchanged
documents, but its record lives in a separate database (langchain-core ships only
an in-memory one): point the app at another Milvus and that record is stale, and
it does not track "all chunks of this file version are present". Every chunk row
here carries ``file_hash`` and ``chunk_count``, so the collection is its own record:
a file is done exactly when it holds ``chunk_count`` rows of its current hash and
no rows of any other version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.errors import StoreUnavailable
from rag.store.filters import source_expr, version_expr

if TYPE_CHECKING:
    from langchain_milvus import Milvus


@dataclass(frozen=True)
class StoredFile:
    """How a source stands in the collection compared with its file on disk."""

    rows: int  # all rows of this source, any version
    current_rows: int  # rows of the file's current hash
    expected_rows: int | None  # chunk_count recorded on those rows

    @property
    def complete(self) -> bool:
        return self.rows == self.current_rows == self.expected_rows and self.rows > 0


async def count(store: Milvus, expr: str) -> int:
    rows = await store.aclient.query(store.collection_name, filter=expr, output_fields=["count(*)"])
    return int(rows[0]["count(*)"]) if rows else 0


async def stored_file(
    store: Milvus, source: str, digest: str, owner: str | None = None
) -> StoredFile:
    """How ``source`` stands: only ``owner``'s rows of it when given (each owner's copy of
    a source is its own file, so another owner's rows never make this one incomplete)."""
    rows = await count(store, source_expr(source, owner))
    if rows == 0:
        return StoredFile(0, 0, None)
    current_expr = version_expr(source, digest, same=True, owner=owner)
    current = await store.aclient.query(
        store.collection_name, filter=current_expr, output_fields=["chunk_count"], limit=1
    )
    if not current:
        return StoredFile(rows, 0, None)
    current_rows = await count(store, current_expr)
    return StoredFile(rows, current_rows, int(current[0]["chunk_count"]))


async def delete_where(store: Milvus, expr: str) -> None:
    """Delete through langchain-milvus, which reports failure as False instead of raising."""
    if not await store.adelete(expr=expr):
        raise StoreUnavailable(f"Milvus refused to delete rows where {expr}")
