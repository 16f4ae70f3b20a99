"""Chunk rows written straight into a collection, for tests of what reads them back.

Built with the schema's own builder (`rag.store.schema.chunk_metadata`), so a new field
reaches every hand-made row at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag.store.schema import (
    PRIMARY_FIELD,
    SHARED,
    TEXT_FIELD,
    VECTOR_FIELD,
    chunk_id,
    chunk_metadata,
)

JANUARY = "2026-01-01T00:00:00+00:00"


def chunk_row(
    source: str,
    index: int,
    total: int,
    *,
    vector: Sequence[float],
    digest: str = "d",
    owner: str = SHARED,
    text: str | None = None,
    size: int = 10,
    at: str = JANUARY,
    title: str | None = None,
) -> dict[str, Any]:
    """Chunk ``index`` of a ``total``-chunk version ``digest`` of ``source``."""
    return {
        PRIMARY_FIELD: chunk_id(source, digest, index, owner),
        TEXT_FIELD: text if text is not None else f"chunk {index} of {source!r}",
        VECTOR_FIELD: list(vector),
        **chunk_metadata(
            source=source,
            title=source if title is None else title,
            section="",
            page=None,
            index=index,
            total=total,
            text=source,
            file_hash=digest,
            file_size=size,
            ingested_at=at,
            owner=owner,
        ),
    }
