"""Ingestion into real Milvus Lite: the sample corpus (once), then small mutating folders."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pymilvus import MilvusClient

from ingest.loaders import load
from rag.embeddings import LOCAL_MODEL_NAME
from rag.errors import EmbeddingMismatch
from rag.store import catalog
from rag.store.milvus import read_identity
from rag.store.schema import chunk_id, content_hash
from tests.conftest import (
    SAMPLE_DOCS,
    SAMPLE_FILE_COUNT,
    Corpus,
    OpenEnv,
    by_source,
    load_questions,
    sample_sources,
    write_files,
)
from tests.support.fake_openai import FakeServer

session_loop = pytest.mark.asyncio(loop_scope="session")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def paragraphs(topic: str, count: int) -> str:
    """Markdown with ``count`` distinct paragraphs of ~150 characters under two headings."""
    body = [f"# {topic.title()} Guide", "## Part one"]
    for i in range(count):
        if i == count // 2:
            body.append("## Part two")
        body.append(
            f"Paragraph {i} about {topic}: the {topic} procedure step {i} needs checking "
            f"twice, and item {i * 7} is logged in the {topic} register by the duty officer."
        )
    return "\n\n".join(body) + "\n"


SMALL_FOLDER: dict[str, str] = {
    "guide.md": paragraphs("battery", 6),
    "notes.txt": "Plain notes: rotor blades are swapped every 200 flight hours.\n",
    "sub/deep/spec.md": "# Heron Spec\n\nThe Heron QH-640 has a wingspan of 2.9 m.\n",
}
SMALL = {"chunk_size": 300, "chunk_overlap": 30}


async def rows_of(env: Any, source: str) -> list[dict[str, Any]]:
    return await env.rows(f'source == "{source}"')


# --------------------------------------------------------------------------------------------
# The sample corpus (ingested once per session, read-only here)
# --------------------------------------------------------------------------------------------


def test_every_sample_file_is_added(corpus: Corpus) -> None:
    report = corpus.report
    outcomes = by_source(report)
    assert report.ok
    assert set(outcomes) == sample_sources()
    assert len(outcomes) == SAMPLE_FILE_COUNT
    assert Counter(o.status for o in outcomes.values()) == {"added": SAMPLE_FILE_COUNT}
    assert all(o.chunks > 0 and o.reason == "" for o in outcomes.values())
    assert report.chunks_written == sum(o.chunks for o in outcomes.values())
    assert "products/wren_qw210_user_manual.pdf" in outcomes  # relative, forward slashes
    # progress reporting saw the same run
    reporter = corpus.reporter
    assert reporter.found == [SAMPLE_FILE_COUNT]
    assert sorted(o.source for o in reporter.done) == sorted(outcomes)
    assert sum(reporter.written) == report.chunks_written
    assert reporter.notes == []


@session_loop
async def test_corpus_rows_equal_the_chunks_written(corpus: Corpus) -> None:
    env = corpus.env
    assert await env.count() == corpus.report.chunks_written
    rows = await env.rows(fields=["pk", "source"])
    assert len(rows) == len({r["pk"] for r in rows}) == corpus.report.chunks_written
    per_source = Counter(r["source"] for r in rows)
    assert per_source == {o.source: o.chunks for o in corpus.report.outcomes}


@session_loop
async def test_corpus_row_metadata(corpus: Corpus) -> None:
    rows = await corpus.env.rows()
    file_hashes = {source: sha256_file(SAMPLE_DOCS / source) for source in sample_sources()}
    by_file: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_file.setdefault(row["source"], []).append(row)
        assert row["title"].strip()
        assert row["content_hash"] == content_hash(row["text"])
        assert row["file_hash"] == file_hashes[row["source"]]
        assert row["pk"] == chunk_id(row["source"], row["file_hash"], row["chunk_index"])
        stamp = datetime.fromisoformat(row["ingested_at"])
        assert stamp.tzinfo is not None
        assert len(row["text"]) <= corpus.env.settings.chunk_size
        if row["source"].endswith(".pdf"):
            assert row["page"] >= 1
        else:
            assert row["page"] == 0
    for source, file_rows in by_file.items():
        counts = {r["chunk_count"] for r in file_rows}
        assert counts == {len(file_rows)}, source
        assert sorted(r["chunk_index"] for r in file_rows) == list(range(len(file_rows)))
    titles = {source: file_rows[0]["title"] for source, file_rows in by_file.items()}
    assert titles["onboarding_guide.md"] == "Quillmoor Drone Works — New Starter Onboarding Guide"
    assert titles["it_helpdesk_guide.txt"] == "it_helpdesk_guide"
    assert titles["employee_handbook_2025.pdf"] == "Quillmoor Employee Handbook 2025.1"
    assert titles["warranty_and_returns.docx"] == "Warranty and Returns Policy"
    assert titles["customer_faq.html"].strip()
    handbook = load(SAMPLE_DOCS / "employee_handbook_2025.pdf", 10**9)
    pages = {part.page for part in handbook.parts() if part.text.strip()}
    assert {r["page"] for r in by_file["employee_handbook_2025.pdf"]} == pages
    sections = {r["section"] for r in by_file["onboarding_guide.md"]}
    assert any(" > " in s for s in sections)


@session_loop
async def test_second_run_changes_nothing(corpus: Corpus) -> None:
    env = corpus.env
    before = await env.count()
    report = await env.ingest(SAMPLE_DOCS)
    assert report.ok
    assert Counter(o.status for o in report.outcomes) == {"unchanged": SAMPLE_FILE_COUNT}
    assert report.chunks_written == 0
    assert await env.count() == before
    # "unchanged" outcomes report how many chunks the file has
    assert {o.source: o.chunks for o in report.outcomes} == {
        o.source: o.chunks for o in corpus.report.outcomes
    }


# --------------------------------------------------------------------------------------------
# Retrieval over the ingested corpus
# --------------------------------------------------------------------------------------------

ANSWERABLE = [q for q in load_questions() if not q.get("unanswerable")]
# Measured: 74 of 80 questions (0.925) have the gold source in the top 5 with dense
# search (the question text as written; follow-ups without their history).
RETRIEVAL_FLOOR = 0.85
assert len(ANSWERABLE) == 80


@session_loop
async def test_gold_source_is_retrieved_for_most_questions(corpus: Corpus) -> None:
    store = corpus.env.store
    ranks: dict[str, int | None] = {}
    for question in ANSWERABLE:
        hits = await store.asimilarity_search_with_score(question["question"], k=5)
        assert len(hits) == 5
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        sources = [doc.metadata["source"] for doc, _ in hits]
        rank = sources.index(question["source"]) + 1 if question["source"] in sources else None
        ranks[question["question"]] = rank
    found = sum(rank is not None for rank in ranks.values()) / len(ranks)
    missed = [q for q, rank in ranks.items() if rank is None]
    assert found >= RETRIEVAL_FLOOR, f"top-5 recall {found:.2f}; missed: {missed}"


EASY = [
    q for q in ANSWERABLE if q["answer"] in ("30 September 2025", "within 72 hours", "Ilse Brouwer")
]


@session_loop
@pytest.mark.parametrize("question", EASY, ids=lambda q: q["source"])
async def test_easy_questions_hit_at_rank_one(corpus: Corpus, question: dict[str, Any]) -> None:
    hits = await corpus.env.store.asimilarity_search_with_score(question["question"], k=5)
    top, score = hits[0]
    assert top.metadata["source"] == question["source"]
    assert question["answer"] in " ".join(top.page_content.split())
    assert 0.5 < score <= 1.0001  # cosine similarity of unit vectors


@session_loop
async def test_pdf_hits_carry_the_right_page(corpus: Corpus) -> None:
    question = next(q for q in ANSWERABLE if q["answer"] == "Ilse Brouwer")
    hits = await corpus.env.store.asimilarity_search_with_score(question["question"], k=5)
    pages = [
        doc.metadata["page"]
        for doc, _ in hits
        if doc.metadata["source"] == question["source"] and "Ilse Brouwer" in doc.page_content
    ]
    assert pages and set(pages) == {question["page"]}


# --------------------------------------------------------------------------------------------
# Mutating runs on small folders (a fresh collection each)
# --------------------------------------------------------------------------------------------


async def test_small_folder_is_added_with_sections(open_env: OpenEnv, tmp_path: Path) -> None:
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    env = await open_env(**SMALL)
    report = await env.ingest(folder)
    outcomes = by_source(report)
    assert set(outcomes) == {"guide.md", "notes.txt", "sub/deep/spec.md"}
    assert all(o.status == "added" for o in outcomes.values())
    assert outcomes["guide.md"].chunks > 2
    assert await env.count() == report.chunks_written
    guide = await rows_of(env, "guide.md")
    assert {r["title"] for r in guide} == {"Battery Guide"}
    assert {r["section"] for r in guide} == {
        "Battery Guide > Part one",
        "Battery Guide > Part two",
    }
    assert [r["section"] for r in await rows_of(env, "notes.txt")] == [""]


async def test_modified_file_is_replaced_without_duplicates(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    env = await open_env(**SMALL)
    first = by_source(await env.ingest(folder))
    others = await env.count('source != "guide.md"')

    for size in (14, 3):  # grow, then shrink: stale chunk indexes must go too
        guide = folder / "guide.md"
        guide.write_text(paragraphs("battery", size))
        report = await env.ingest(folder)
        outcomes = by_source(report)
        assert outcomes["guide.md"].status == "updated"
        assert outcomes["notes.txt"].status == outcomes["sub/deep/spec.md"].status == "unchanged"
        chunks = outcomes["guide.md"].chunks
        assert chunks != first["guide.md"].chunks
        assert report.chunks_written == chunks
        rows = await rows_of(env, "guide.md")
        assert len(rows) == chunks
        assert len({r["pk"] for r in rows}) == chunks
        assert {r["file_hash"] for r in rows} == {sha256_file(guide)}
        assert {r["chunk_count"] for r in rows} == {chunks}
        assert sorted(r["chunk_index"] for r in rows) == list(range(chunks))
        assert await env.count('source != "guide.md"') == others
        assert await env.count() == others + chunks


async def test_touching_a_file_without_changing_it_keeps_it_unchanged(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    env = await open_env(**SMALL)
    await env.ingest(folder)
    os.utime(folder / "guide.md", (1_000_000_000, 1_000_000_000))
    report = await env.ingest(folder)
    assert {o.status for o in report.outcomes} == {"unchanged"}
    assert report.chunks_written == 0


async def test_deleted_file_is_removed_unless_keep_missing(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    env = await open_env(**SMALL)
    await env.ingest(folder)
    total = await env.count()
    notes_rows = await env.count('source == "notes.txt"')
    assert notes_rows == 1

    (folder / "notes.txt").unlink()
    kept = await env.ingest(folder, keep_missing=True)
    assert "notes.txt" not in by_source(kept)
    assert await env.count() == total

    removed = await env.ingest(folder)
    outcomes = by_source(removed)
    assert outcomes["notes.txt"].status == "removed"
    assert outcomes["guide.md"].status == "unchanged"
    assert removed.ok
    assert await env.count('source == "notes.txt"') == 0
    assert await env.count() == total - notes_rows


async def test_renamed_file_moves_its_rows(open_env: OpenEnv, tmp_path: Path) -> None:
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    env = await open_env(**SMALL)
    await env.ingest(folder)
    total = await env.count()
    (folder / "sub" / "deep" / "spec.md").rename(folder / "spec-v2.md")
    outcomes = by_source(await env.ingest(folder))
    assert outcomes["sub/deep/spec.md"].status == "removed"
    assert outcomes["spec-v2.md"].status == "added"
    assert await env.count() == total
    assert await env.count('source == "sub/deep/spec.md"') == 0


async def test_an_ingest_refreshes_the_cached_list_of_files(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    """The chat lists documents from a catalog kept in the process; an ingest drops it."""
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    env = await open_env(**SMALL)
    assert await catalog.source_names(env.store) == []  # read, and kept for a while
    await env.ingest(folder)
    assert await catalog.source_names(env.store) == sorted(SMALL_FOLDER)
    (folder / "notes.txt").unlink()
    await env.ingest(folder)
    assert await catalog.source_names(env.store) == ["guide.md", "sub/deep/spec.md"]


async def test_single_file_ingest_leaves_other_sources_alone(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    env = await open_env(**SMALL)
    await env.ingest(folder)
    total = await env.count()

    same = await env.ingest(folder / "guide.md")
    assert [(o.source, o.status) for o in same.outcomes] == [("guide.md", "unchanged")]

    (folder / "extra.md").write_text("# Extra\n\nDockPost anchor nuts: 40 Nm.\n")
    added = await env.ingest(folder / "extra.md")
    assert [(o.source, o.status) for o in added.outcomes] == [("extra.md", "added")]
    assert await env.count() == total + 1
    for source in SMALL_FOLDER:
        assert await env.count(f'source == "{source}"') > 0


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["*.md"], [], {"a.md", "drafts/c.md", "deep/x/d.md"}),
        ([], ["drafts/*"], {"a.md", "b.txt", "secret_plan.txt", "deep/x/d.md"}),
        ([], ["secret*", "*.txt"], {"a.md", "drafts/c.md", "deep/x/d.md"}),
        (["deep/*"], [], {"deep/x/d.md"}),
        (["*.csv"], [], {"table.csv"}),  # an explicit include takes unsupported suffixes too
    ],
    ids=["include-md", "exclude-folder", "exclude-names", "include-path", "include-csv"],
)
async def test_include_and_exclude_globs(
    open_env: OpenEnv, tmp_path: Path, include: list[str], exclude: list[str], expected: set[str]
) -> None:
    folder = write_files(
        tmp_path / "docs",
        {
            "a.md": "# A\n\nalpha",
            "b.txt": "bravo",
            "secret_plan.txt": "charlie",
            "drafts/c.md": "# C\n\ndelta",
            "deep/x/d.md": "# D\n\necho",
            "table.csv": "sku,price\nSRV-DIAG,180\n",
            "image.png": b"\x89PNG\r\n\x1a\n\x00\x00",
        },
    )
    env = await open_env(**SMALL)
    report = await env.ingest(folder, include=include, exclude=exclude)
    assert set(by_source(report)) == expected
    assert {o.status for o in report.outcomes} == {"added"}
    rows = await env.rows(fields=["source"])
    assert {r["source"] for r in rows} == expected


async def test_hidden_files_and_folders_are_skipped(open_env: OpenEnv, tmp_path: Path) -> None:
    folder = write_files(
        tmp_path / "docs",
        {
            "visible.md": "# Visible\n\nshown",
            ".hidden.md": "# Hidden\n\nnot shown",
            ".git/description.md": "# Git\n\nnot shown",
            ".venv/lib/readme.txt": "not shown",
            "notes/.draft.txt": "not shown",
            "notes/kept.txt": "shown",
        },
    )
    env = await open_env(**SMALL)
    report = await env.ingest(folder)
    assert set(by_source(report)) == {"visible.md", "notes/kept.txt"}


@pytest.mark.timeout(60)
async def test_symlinks_are_safe(open_env: OpenEnv, tmp_path: Path) -> None:
    outside = write_files(tmp_path / "outside", {"shared.md": "# Shared\n\nlinked in"})
    folder = write_files(tmp_path / "docs", {"a.md": "# A\n\nalpha", "sub/b.md": "# B\n\nbravo"})
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)  # a folder loop
    (folder / "sub" / "up").symlink_to("..", target_is_directory=True)
    (folder / "self.md").symlink_to("self.md")  # a link to itself
    (folder / "linked.md").symlink_to(outside / "shared.md")
    env = await open_env(**SMALL)
    report = await env.ingest(folder)
    outcomes = by_source(report)
    assert set(outcomes) == {"a.md", "sub/b.md", "self.md", "linked.md"}
    assert outcomes["linked.md"].status == "added"  # a linked file is followed
    assert outcomes["self.md"].status == "failed" and outcomes["self.md"].reason
    assert not report.ok
    rows = await env.rows(fields=["source"])
    assert {r["source"] for r in rows} == {"a.md", "sub/b.md", "linked.md"}


async def test_small_batches_written_concurrently_are_all_there(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    files = {f"topic{i}.md": paragraphs(f"topic{i}", 6) for i in range(5)}
    folder = write_files(tmp_path / "docs", files)
    env = await open_env(batch_size=2, concurrency=3, **SMALL)
    report = await env.ingest(folder)
    assert report.ok and report.count("added") == 5
    rows = await env.rows(fields=["pk", "source", "chunk_index", "chunk_count"])
    assert len(rows) == len({r["pk"] for r in rows}) == report.chunks_written
    for source in files:
        indexes = sorted(r["chunk_index"] for r in rows if r["source"] == source)
        assert indexes == list(range(len(indexes)))


# --------------------------------------------------------------------------------------------
# A collection belongs to one embedding model
# --------------------------------------------------------------------------------------------


async def test_other_embedding_model_is_refused_until_recreate(
    open_env: OpenEnv, tmp_path: Path, fake_openai: FakeServer, session_db: str
) -> None:
    folder = write_files(tmp_path / "docs", SMALL_FOLDER)
    local = await open_env(**SMALL)
    await local.ingest(folder)
    name = local.settings.collection
    remote: dict[str, object] = {
        "collection": name,
        "embedding_provider": "openai",
        "embedding_base_url": fake_openai.base_url,
        "embedding_dimensions": 256,
        **SMALL,
    }

    with pytest.raises(EmbeddingMismatch) as caught:
        await open_env(**remote)
    message = str(caught.value)
    assert "--recreate" in message
    assert LOCAL_MODEL_NAME in message and "384" in message
    assert "text-embedding-3-small" in message and "256" in message
    assert await local.count() > 0  # nothing was dropped

    rebuilt = await open_env(recreate=True, **remote)
    assert await rebuilt.count() == 0
    report = await rebuilt.ingest(folder)
    assert report.ok and report.count("added") == 3  # nothing "unchanged" from the old model
    assert await rebuilt.count() == report.chunks_written
    assert fake_openai.fake.embedding_requests()
    hits = await rebuilt.store.asimilarity_search_with_score("Heron wingspan", k=1)
    assert hits[0][0].metadata["source"] == "sub/deep/spec.md"

    client = MilvusClient(uri=session_db)
    try:
        identity = read_identity(client, name)
    finally:
        client.close()
    assert identity is not None
    assert (identity.embedding_model, identity.dimension) == ("text-embedding-3-small", 256)

    with pytest.raises(EmbeddingMismatch, match="--recreate"):
        await open_env(collection=name, **SMALL)  # and now the local model is the stranger


async def test_foreign_collection_is_refused(open_env: OpenEnv, session_db: str) -> None:
    client = MilvusClient(uri=session_db)
    try:
        client.create_collection("foreign_made_elsewhere", dimension=384)
    finally:
        client.close()
    try:
        with pytest.raises(EmbeddingMismatch, match="not created by this app"):
            await open_env(collection="foreign_made_elsewhere")
    finally:
        client = MilvusClient(uri=session_db)
        try:
            client.drop_collection("foreign_made_elsewhere")
        finally:
            client.close()
