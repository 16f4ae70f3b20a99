"""What one chunk row is: its fields, its primary key, and the builder that makes it.

The one definition of the row format: the collection's schema (``rag.store.milvus``), the
rows the ingest writes (``chunk_metadata``) and the fields a search reads back
(``rag.retrieval``) all take their names from here, so adding a field is one edit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pymilvus import DataType

PRIMARY_FIELD = "pk"
TEXT_FIELD = "text"
VECTOR_FIELD = "vector"
# BM25 full-text search: Milvus computes this sparse vector from TEXT_FIELD itself
# (a built-in function), so inserts never carry it.
SPARSE_FIELD = "sparse"
BM25_FUNCTION = "text_bm25"
# 3: chunk text starts with a contextual header (ingest/split.py). Older collections still
# work but rank worse, and unchanged files are never rewritten, so they must be rebuilt.
# 4: every row records its owner. Milvus 2.3 cannot add a field to an existing
# collection, and reading old rows as shared while new ones filter on the field would
# split every query in two, so older collections are rebuilt instead.
SCHEMA_VERSION = 4
# What each version changed, told to the user who is asked to rebuild.
SCHEMA_CHANGES = {
    3: "chunks now start with their document title and section",
    4: "chunks now record who may see them (private uploads)",
}
# The owner of rows everyone may see (folder ingests). Any other value is one owner key:
# a signed-in user's identifier, or ``thread:<chat thread id>`` without login.
SHARED = ""
MAX_VARCHAR = 65_535
# Every chunk row carries exactly these metadata fields, so the schema never
# depends on which document happened to be inserted first.
METADATA_FIELDS: dict[str, DataType] = {
    "source": DataType.VARCHAR,
    "title": DataType.VARCHAR,
    "section": DataType.VARCHAR,
    "page": DataType.INT64,
    "chunk_index": DataType.INT64,
    "chunk_count": DataType.INT64,
    "content_hash": DataType.VARCHAR,
    "file_hash": DataType.VARCHAR,
    "file_size": DataType.INT64,
    "ingested_at": DataType.VARCHAR,
    # Who may see the row: SHARED or one owner key (rag.store.filters.visible_to).
    "owner": DataType.VARCHAR,
}


def chunk_metadata(
    *,
    source: str,
    title: str,
    section: str,
    page: int | None,
    index: int,
    total: int,
    text: str,
    file_hash: str,
    file_size: int,
    ingested_at: str,
    owner: str = SHARED,
) -> dict[str, Any]:
    """The metadata of one chunk row: exactly ``METADATA_FIELDS``, values cut to fit.

    ``owner`` is never cut: a shortened key would be another owner's, or nobody's.
    """
    row: dict[str, Any] = {  # keys: exactly METADATA_FIELDS (tests/rag/test_schema.py)
        "source": source,
        "title": title[:500],
        "section": section[:1000],
        "page": page or 0,
        "chunk_index": index,
        "chunk_count": total,
        "content_hash": content_hash(text),
        "file_hash": file_hash,
        "file_size": file_size,
        "ingested_at": ingested_at,
        "owner": owner,
    }
    return row


def chunk_id(source: str, file_hash: str, index: int, owner: str = SHARED) -> str:
    """Deterministic primary key: re-running never mints new IDs for the same chunk.

    The file hash is part of it so a new version of a file can be written beside the
    old one and the old rows dropped only once the new ones are all in: a crash
    mid-update leaves the previous version searchable. So is the owner: Milvus does not
    deduplicate primary keys, and a delete by key (a retried insert clears its keys)
    must never reach another owner's copy of the same file.
    """
    key = f"{source}\n{file_hash}\n{index}"
    if owner != SHARED:  # JSON keeps (owner, key) pairs apart whatever the owner holds
        key = json.dumps([owner, key])
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def file_hash(path: object) -> str:
    """Blocking: sha256 of a file, read in blocks so huge files stay cheap."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # type: ignore[call-overload]
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
