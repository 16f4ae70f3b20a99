"""Per-file plans against a real Milvus Lite collection, and the scope of removals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ingest.plan import NOT_STORED, Planner, Scope
from rag.store import records
from rag.store.filters import ids_expr
from rag.store.schema import chunk_id, file_hash
from tests.conftest import IngestEnv, OpenEnv, write_files

SETTINGS = {"chunk_size": 200, "chunk_overlap": 20}
GUIDE = "\n\n".join(
    f"Step {i}: tighten anchor nut {i} of the DockPost to {i * 5} Nm." for i in range(12)
)


async def direct(func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """The plan's queries without retries: a failure here is a failure of the test."""
    return await func(*args)


async def ingested(open_env: OpenEnv, tmp_path: Path) -> tuple[IngestEnv, Path, int]:
    folder = write_files(tmp_path / "docs", {"guide.md": GUIDE, "notes.txt": "A short note."})
    env = await open_env(**SETTINGS)
    report = await env.ingest(folder)
    assert report.ok
    chunks = await env.count('source == "guide.md"')
    assert chunks > 2
    return env, folder, chunks


async def test_a_new_collection_plans_every_file_as_new_without_a_query(
    open_env: OpenEnv,
) -> None:
    env = await open_env(**SETTINGS)
    queries: list[str] = []

    async def counting(func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        queries.append(func.__name__)
        return await func(*args)

    planner = await Planner.start(env.store, counting, whole_folder=True)
    assert planner.known == set() and queries == ["row_counts"]
    plan = await planner.plan("guide.md", "d1")
    assert queries == ["row_counts"], "a source known to be new needs no look-up"
    assert plan.stored == NOT_STORED and not plan.unchanged
    assert plan.status == "added"
    assert plan.clear_first(3) is None and plan.clear_first(0) is None
    assert plan.replaced is None


async def test_an_unchanged_file_is_complete(open_env: OpenEnv, tmp_path: Path) -> None:
    env, folder, chunks = await ingested(open_env, tmp_path)
    planner = await Planner.start(env.store, direct, whole_folder=True)
    assert planner.known == {"guide.md", "notes.txt"}
    assert not planner.is_new("guide.md") and planner.is_new("other.md")
    plan = await planner.plan("guide.md", file_hash(folder / "guide.md"))
    assert plan.unchanged
    assert plan.stored.rows == plan.stored.current_rows == plan.stored.expected_rows == chunks


async def test_a_changed_file_is_written_beside_its_old_version_then_replaces_it(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    env, _, chunks = await ingested(open_env, tmp_path)
    planner = await Planner.start(env.store, direct, whole_folder=True)
    plan = await planner.plan("guide.md", "a-new-digest")
    assert not plan.unchanged and plan.status == "updated"
    assert plan.clear_first(5) is None, "the old version stays searchable while the new is written"
    assert plan.replaced is not None
    # What `replaced` deletes is exactly the old version, and nothing of another file.
    assert await env.count(plan.replaced) == chunks
    notes = await env.count('source == "notes.txt"')
    await records.delete_where(env.store, plan.replaced)
    assert await env.count('source == "guide.md"') == 0
    assert await env.count('source == "notes.txt"') == notes


async def test_leftovers_of_an_interrupted_run_are_cleared_and_rewritten(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    env, folder, chunks = await ingested(open_env, tmp_path)
    digest = file_hash(folder / "guide.md")
    # The first chunk is the one lost: the source has rows but no catalog entry.
    await records.delete_where(env.store, ids_expr([chunk_id("guide.md", digest, 0)]))
    planner = await Planner.start(env.store, direct, whole_folder=True)
    assert planner.known is not None and "guide.md" in planner.known
    plan = await planner.plan("guide.md", digest)
    assert not plan.unchanged
    assert plan.stored.current_rows == chunks - 1 and plan.stored.expected_rows == chunks
    assert plan.status == "added", "no other version to replace"
    assert plan.replaced is None
    clear = plan.clear_first(chunks)
    assert clear is not None and await env.count(clear) == chunks - 1


async def test_an_emptied_file_loses_every_row(open_env: OpenEnv, tmp_path: Path) -> None:
    env, _, chunks = await ingested(open_env, tmp_path)
    planner = Planner(env.store, direct, known=None)  # a single-file run: look every file up
    assert not planner.is_new("guide.md")
    plan = await planner.plan("guide.md", "digest-of-the-empty-file")
    clear = plan.clear_first(0)
    assert clear is not None and await env.count(clear) == chunks
    assert (await planner.plan("never-seen.md", "d")).clear_first(0) is None


def test_missing_sources_are_those_the_run_answers_for() -> None:
    known = {"a.md", "b.pdf", "sub/c.md", "uploads/chat.md", "kept.md", "team/x.md"}
    planner = Planner(None, direct, known)  # type: ignore[arg-type]  # no query is made
    assert planner.missing({"kept.md"}, Scope()) == [
        "a.md",
        "b.pdf",
        "sub/c.md",
        "team/x.md",
    ], "a folder run never removes chat uploads"
    assert planner.missing({"kept.md"}, Scope(include=("*.pdf",))) == ["b.pdf"]
    assert planner.missing({"kept.md"}, Scope(exclude=("sub/*",))) == [
        "a.md",
        "b.pdf",
        "team/x.md",
    ]
    assert planner.missing({"team/y.md"}, Scope(prefix="team/")) == ["team/x.md"]
    assert planner.missing({"uploads/new.md"}, Scope(prefix="uploads/")) == ["uploads/chat.md"]
    assert planner.missing(set(), Scope()) == [], "an empty folder removes nothing"
    assert Planner(None, direct, None).missing({"a.md"}, Scope()) == []  # type: ignore[arg-type]
