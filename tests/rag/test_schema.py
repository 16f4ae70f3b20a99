"""The row schema: one builder makes exactly the fields the collection declares."""

from rag.store.schema import METADATA_FIELDS, SHARED, chunk_id, chunk_metadata


def test_chunk_metadata_has_exactly_the_declared_fields_cut_to_fit() -> None:
    row = chunk_metadata(
        source="a/b.md",
        title="t" * 600,
        section="s" * 1200,
        page=None,
        index=2,
        total=3,
        text="chunk text",
        file_hash="f" * 64,
        file_size=10,
        ingested_at="2026-01-01T00:00:00+00:00",
    )
    assert row.keys() == METADATA_FIELDS.keys()
    assert (len(row["title"]), len(row["section"]), row["page"]) == (500, 1000, 0)
    assert row["owner"] == SHARED  # a folder ingest's rows are everyone's


def test_chunk_metadata_records_the_owner_whole() -> None:
    owner = "thread:" + "x" * 2000
    row = chunk_metadata(
        source="uploads/o/a.md",
        title="t",
        section="",
        page=1,
        index=0,
        total=1,
        text="chunk text",
        file_hash="f",
        file_size=1,
        ingested_at="2026-01-01T00:00:00+00:00",
        owner=owner,
    )
    assert row["owner"] == owner


def test_chunk_ids_are_stable_and_differ_by_file_version_and_position() -> None:
    first = chunk_id("a.md", "hash1", 0)
    assert first == chunk_id("a.md", "hash1", 0)
    assert len({first, chunk_id("a.md", "hash2", 0), chunk_id("a.md", "hash1", 1)}) == 3
