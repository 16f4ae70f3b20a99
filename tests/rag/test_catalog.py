"""The catalog on Milvus Lite: what `rag sources` and the chat's document list read.

Rows are written by hand (with the ingest's own row builder) so each test can make the
states an ingest leaves behind: a complete file, one cut short, two versions of one file
while an update is under way, and rows whose first chunk is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from milvus_lite.server_manager import server_manager_instance

from rag.embeddings import LocalMiniLMEmbeddings
from rag.store import catalog
from rag.store.catalog import (
    SourceInfo,
    invalidate,
    list_sources,
    remove_sources,
    row_counts,
    source_names,
)
from rag.store.milvus import RagMilvus, open_store
from tests.conftest import make_settings
from tests.support.rows import chunk_row

DIMENSION = 2
JANUARY = "2025-01-01T00:00:00+00:00"
FEBRUARY = "2025-02-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("catalog") / "catalog.db")
    yield path
    server_manager_instance.release_server(path)


async def _open(db: str, name: str) -> RagMilvus:
    """A store as the app opens it; the model is never called, so it is never loaded."""
    settings = make_settings(db, name)
    return await asyncio.to_thread(
        open_store, settings, LocalMiniLMEmbeddings(), DIMENSION, embedding_model="test-model"
    )


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return "c_" + request.node.name.split("[")[0].removeprefix("test_")[:60]


def write(
    store: RagMilvus,
    source: str,
    *,
    total: int,
    present: list[int] | None = None,
    digest: str = "h1",
    at: str = JANUARY,
    size: int = 100,
) -> None:
    """Rows ``present`` (default: all) of a ``total``-chunk version of ``source``."""
    rows = [
        chunk_row(
            source,
            index,
            total,
            vector=[1.0, float(index)],
            digest=digest,
            text=f"chunk {index} of {source}",
            size=size,
            at=at,
        )
        for index in (range(total) if present is None else present)
    ]
    store.client.insert(store.collection_name, rows)


async def test_each_file_with_its_rows_and_its_record(db: str, name: str) -> None:
    store = await _open(db, name)
    write(store, "a.md", total=3, size=30)
    write(store, "dir/b.txt", total=4, present=[0, 1])  # cut short
    write(store, "c.pdf", total=2, digest="old", at=JANUARY)  # an update under way:
    write(store, "c.pdf", total=3, digest="new", at=FEBRUARY, size=7)  # both versions there
    write(store, "orphan.md", total=3, present=[1, 2], digest="x")  # first chunk missing

    found = await list_sources(store)

    assert found == [
        SourceInfo("a.md", 3, 3, "h1", 30, JANUARY),
        SourceInfo("c.pdf", 5, 3, "new", 7, FEBRUARY),
        SourceInfo("dir/b.txt", 2, 4, "h1", 100, JANUARY),
        SourceInfo("orphan.md", 2, 0, "", 0, ""),
    ]
    assert [s.complete for s in found] == [True, False, False, False]
    assert found[0].to_dict()["complete"] is True
    # The chat lists the files the catalog holds: every file with a first chunk.
    assert await source_names(store) == ["a.md", "c.pdf", "dir/b.txt"]


async def test_scans_page_through_more_rows_than_one_page(
    db: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog, "PAGE", 4)
    store = await _open(db, name)
    for n in range(15):
        write(store, f"doc{n:02}.md", total=1 + n % 3)

    found = await list_sources(store)

    assert [s.source for s in found] == [f"doc{n:02}.md" for n in range(15)]
    assert [s.chunks for s in found] == [1 + n % 3 for n in range(15)]
    assert all(s.complete for s in found)
    assert sum((await row_counts(store)).values()) == sum(1 + n % 3 for n in range(15))


async def test_the_catalog_is_kept_until_invalidated(
    db: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _open(db, name)
    write(store, "first.md", total=1)
    assert await source_names(store) == ["first.md"]

    write(store, "second.md", total=2)
    assert await source_names(store) == ["first.md"], "read once, then kept"

    # Another store on the same collection (the ingest's, say) shares the entry.
    other = await _open(db, name)
    invalidate(other)
    assert await source_names(store) == ["first.md", "second.md"]

    write(store, "third.md", total=1)
    assert [s.source for s in await list_sources(store)] == ["first.md", "second.md", "third.md"]
    assert await source_names(store) == ["first.md", "second.md", "third.md"], (
        "listing the sources reads the catalog fresh and keeps that copy"
    )

    write(store, "fourth.md", total=1)
    monkeypatch.setattr(catalog, "MAX_AGE", 0.0)
    assert "fourth.md" in await source_names(store), "an old entry is read again"


async def test_an_invalidation_during_a_scan_is_not_undone(
    db: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest that finishes while a scan is under way must not be hidden by that scan."""
    store = await _open(db, name)
    write(store, "before.md", total=1)
    real_scan = catalog._scan

    def scan_then_ingest(*args: Any) -> Iterator[dict[str, Any]]:
        rows = list(real_scan(*args))
        write(store, "during.md", total=1)
        invalidate(store)
        return iter(rows)

    monkeypatch.setattr(catalog, "_scan", scan_then_ingest)
    assert [v.source for v in await catalog.catalog(store)] == ["before.md"]
    monkeypatch.setattr(catalog, "_scan", real_scan)
    assert await source_names(store) == ["before.md", "during.md"]


async def test_remove_deletes_what_matches_and_refreshes_the_catalog(db: str, name: str) -> None:
    store = await _open(db, name)
    write(store, "keep/a.pdf", total=2)
    write(store, "notes.md", total=3)
    write(store, "old/notes.md", total=1)
    write(store, "orphan.md", total=2, present=[1])
    assert await source_names(store) == ["keep/a.pdf", "notes.md", "old/notes.md"]

    dry = await remove_sources(store, ["*.md"], dry_run=True)
    assert dry.dry_run and dry.rows == 5
    assert [s.source for s in dry.sources] == ["notes.md", "old/notes.md", "orphan.md"]
    assert sum((await row_counts(store)).values()) == 7, "a dry run deletes nothing"

    nothing = await remove_sources(store, ['x" or source != "', "old/notes"])
    assert [s.source for s in nothing.sources] == [], "a pattern is matched in Python"

    removed = await remove_sources(store, ["*.md"])
    assert removed.rows == 5 and not removed.dry_run
    assert await source_names(store) == ["keep/a.pdf"], "the kept catalog was dropped"
    assert [s.source for s in await list_sources(store)] == ["keep/a.pdf"]


async def test_an_empty_collection_lists_nothing(db: str, name: str) -> None:
    store = await _open(db, name)
    assert await list_sources(store) == []
    assert await source_names(store) == []
    assert (await remove_sources(store, ["*"])).sources == []
