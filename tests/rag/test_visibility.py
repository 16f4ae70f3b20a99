"""Who sees which rows, on Milvus Lite: every search mode returns the shared rows and the
viewer's own, never another owner's; every clean-up stays within one owner's rows.

Alice and bob each upload a ``secret.md`` under the *same* source name (the store must
keep them apart even then; the chat also gives each owner its own folder) and alice a
file of her own. The team folder holds shared files, one of them also named
``secret.md``. Every document mentions the same word, so every search can reach every
row and only the visibility filter decides what comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_milvus import Milvus

from ingest.pipeline import ingest_path
from rag.config import Settings
from rag.embeddings import LocalMiniLMEmbeddings
from rag.retrieval import PassageRetriever, SearchOptions, retrieve
from rag.store import records
from rag.store.catalog import list_sources, remove_sources, source_names
from rag.store.filters import ids_expr, owned_by, source_expr
from rag.store.schema import SHARED, chunk_id, file_hash
from tests.conftest import (
    IngestEnv,
    OpenEnv,
    filled_collection,
    write_files,
)

COLLECTION = "visibility_docs"
WORD = "codeword"
ALICE, BOB = "alice", "bob"
UPLOADS = "uploads/"
TEAM = {
    "handbook.md": f"# Handbook\n\nThe {WORD} for the whole team is HARBOR-11.\n",
    "secret.md": f"# Lobby\n\nThe {WORD} printed on the lobby poster is LOBBY-22.\n",
}
ALICE_FILES = {
    "secret.md": f"# Alice\n\nThe {WORD} of Alice's private project is ALPHA-42.\n",
    "alice-only.md": f"# Plans\n\nThe {WORD} of Alice's travel plans is ALPHA-99.\n",
}
BOB_FILES = {"secret.md": f"# Bob\n\nThe {WORD} of Bob's private project is BRAVO-77.\n"}
SHARED_ROWS = {(SHARED, "handbook.md"), (SHARED, "secret.md")}
OWN_ROWS = {
    ALICE: {(ALICE, "uploads/secret.md"), (ALICE, "uploads/alice-only.md")},
    BOB: {(BOB, "uploads/secret.md")},
}
MODES = ["dense", "bm25", "hybrid"]


async def _ingest_all(store: Milvus, settings: Settings, root: Path) -> None:
    """The team folder shared, then each owner's files as that owner's uploads."""
    team = await ingest_path(write_files(root / "team", TEAM), store, settings)
    assert team.ok and team.count("added") == len(TEAM), team.outcomes
    for owner, files in ((ALICE, ALICE_FILES), (BOB, BOB_FILES)):
        folder = write_files(root / owner, files)
        for name in files:
            report = await ingest_path(
                folder / name, store, settings, owner=owner, source_prefix=UPLOADS
            )
            assert report.ok and report.count("added") == 1, report.outcomes


@pytest.fixture(scope="module")
async def collection(
    session_db: str,
    local_embeddings: LocalMiniLMEmbeddings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Settings]:
    """Shared, alice's and bob's rows in one collection, written once for the searches."""

    async def fill(store: Milvus, settings: Settings) -> None:
        await _ingest_all(store, settings, tmp_path_factory.mktemp("visibility"))

    async with filled_collection(session_db, COLLECTION, local_embeddings, fill) as settings:
        yield settings


def _seen(documents: list[Document]) -> set[tuple[str, str]]:
    return {(str(d.metadata["owner"]), str(d.metadata["source"])) for d in documents}


def _everything(viewer: str, mode: str, mmr: bool, **overrides: Any) -> SearchOptions:
    """Room for every row of the collection, so only visibility limits what comes back."""
    return SearchOptions(k=10, fetch_k=20, mode=mode, mmr=mmr, viewer=viewer, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("mmr", [False, True], ids=["plain", "mmr"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("viewer", [SHARED, ALICE, BOB], ids=["anonymous", ALICE, BOB])
async def test_every_search_mode_returns_shared_and_own_rows_only(
    store: Milvus, viewer: str, mode: str, mmr: bool
) -> None:
    hits = await retrieve(store, WORD, _everything(viewer, mode, mmr))
    assert _seen([h.document for h in hits]) == SHARED_ROWS | OWN_ROWS.get(viewer, set())


@pytest.mark.parametrize("mmr", [False, True], ids=["plain", "mmr"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_source_filter_never_reaches_another_owners_rows(
    store: Milvus, mode: str, mmr: bool
) -> None:
    """The client picks the source filter; the server still decides what bob may see."""
    theirs = _everything(BOB, mode, mmr, sources=("uploads/alice-only.md",))
    assert await retrieve(store, "ALPHA-99 travel plans", theirs) == []
    same_name = _everything(BOB, mode, mmr, sources=("uploads/secret.md",))
    hits = await retrieve(store, WORD, same_name)
    assert _seen([h.document for h in hits]) == {(BOB, "uploads/secret.md")}
    both = _everything(BOB, mode, mmr, sources=("uploads/alice-only.md", "secret.md"))
    assert _seen([h.document for h in await retrieve(store, WORD, both)]) == {(SHARED, "secret.md")}


@pytest.mark.parametrize("mode", MODES)
async def test_the_retriever_filters_on_its_sync_and_async_paths(store: Milvus, mode: str) -> None:
    retriever = PassageRetriever(store=store, options=_everything(BOB, mode, mmr=False))
    expected = SHARED_ROWS | OWN_ROWS[BOB]
    assert _seen(await retriever.ainvoke(WORD)) == expected
    assert _seen(await asyncio.to_thread(retriever.invoke, WORD)) == expected
    theirs = {"sources": ["uploads/alice-only.md"]}
    assert await retriever.ainvoke(WORD, **theirs) == []
    assert await asyncio.to_thread(lambda: retriever.invoke(WORD, **theirs)) == []
    # The same retriever for another viewer, per call: alice's rows, and no longer bob's.
    as_alice = await asyncio.to_thread(lambda: retriever.invoke(WORD, viewer=ALICE))
    assert _seen(as_alice) == SHARED_ROWS | OWN_ROWS[ALICE]


async def test_source_names_are_the_files_a_viewer_may_see(store: Milvus) -> None:
    assert await source_names(store) == ["handbook.md", "secret.md"]
    assert await source_names(store, ALICE) == [
        "handbook.md",
        "secret.md",
        "uploads/alice-only.md",
        "uploads/secret.md",
    ]
    assert await source_names(store, BOB) == ["handbook.md", "secret.md", "uploads/secret.md"]
    assert await source_names(store, "carol") == ["handbook.md", "secret.md"]


async def test_list_sources_shows_each_owners_copy_of_a_file(store: Milvus) -> None:
    listed = {(s.owner, s.source): s for s in await list_sources(store)}
    assert listed.keys() == SHARED_ROWS | OWN_ROWS[ALICE] | OWN_ROWS[BOB]
    assert all(s.complete and s.chunks == 1 for s in listed.values())
    assert (
        listed[(ALICE, "uploads/secret.md")].file_hash
        != listed[(BOB, "uploads/secret.md")].file_hash
    )
    assert listed[(BOB, "uploads/secret.md")].to_dict()["owner"] == BOB
    assert {s.owner for s in await list_sources(store, BOB)} == {BOB}


# --- clean-ups: each test writes its own collection ------------------------------------------


async def _written(open_env: OpenEnv, tmp_path: Path) -> IngestEnv:
    env = await open_env()
    await _ingest_all(env.store, env.settings, tmp_path)
    return env


async def _rows(env: IngestEnv) -> dict[tuple[str, str], set[str]]:
    """The file hashes stored per (owner, source)."""
    found: dict[tuple[str, str], set[str]] = {}
    for row in await env.rows(fields=["owner", "source", "file_hash"]):
        found.setdefault((row["owner"], row["source"]), set()).add(row["file_hash"])
    return found


async def test_an_upload_ingested_again_touches_only_its_owners_rows(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    env = await _written(open_env, tmp_path)
    before = await _rows(env)
    changed = write_files(tmp_path / "alice-again", {"secret.md": "ALPHA-43, a new codeword.\n"})
    report = await env.ingest(changed / "secret.md", owner=ALICE, source_prefix=UPLOADS)
    assert [(o.source, o.status) for o in report.outcomes] == [("uploads/secret.md", "updated")]
    after = await _rows(env)
    assert after[(ALICE, "uploads/secret.md")] == {file_hash(changed / "secret.md")}
    assert {k: v for k, v in after.items() if k[0] != ALICE} == {
        k: v for k, v in before.items() if k[0] != ALICE
    }, "bob's copy and the shared secret.md kept their rows"

    emptied = write_files(tmp_path / "alice-empty", {"secret.md": ""})
    await env.ingest(emptied / "secret.md", owner=ALICE, source_prefix=UPLOADS)
    gone = await _rows(env)
    assert (ALICE, "uploads/secret.md") not in gone
    assert gone[(BOB, "uploads/secret.md")] == before[(BOB, "uploads/secret.md")]


async def test_identical_uploads_of_two_owners_are_two_files(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    """Same content, same source name: the same hash, so only the owner tells them apart,
    in the primary keys and in every clean-up of an interrupted or updated upload."""
    env = await open_env()
    text = f"The {WORD} both of them were given is TWIN-55.\n"
    for owner in (ALICE, BOB):
        folder = write_files(tmp_path / owner, {"twin.md": text})
        assert (await env.ingest(folder / "twin.md", owner=owner, source_prefix=UPLOADS)).ok
    source = "uploads/twin.md"
    assert await env.count(source_expr(source)) == 2, "one row each, not one overwritten"
    digest = file_hash(tmp_path / ALICE / "twin.md")
    assert chunk_id(source, digest, 0, ALICE) != chunk_id(source, digest, 0, BOB)

    # Alice's run was cut short (her first chunk is lost): her re-run rewrites her copy only.
    await records.delete_where(env.store, ids_expr([chunk_id(source, digest, 0, ALICE)]))
    assert await env.count(source_expr(source, ALICE)) == 0
    report = await env.ingest(tmp_path / ALICE / "twin.md", owner=ALICE, source_prefix=UPLOADS)
    assert report.ok and await env.count(source_expr(source, ALICE)) == 1
    assert await env.count(source_expr(source, BOB)) == 1

    # Bob's copy is complete, so his upload of the same file again is unchanged.
    again = await env.ingest(tmp_path / BOB / "twin.md", owner=BOB, source_prefix=UPLOADS)
    assert [o.status for o in again.outcomes] == ["unchanged"]

    # Bob updates his copy: the old version goes for him, and stays for alice.
    newer = write_files(tmp_path / "bob-new", {"twin.md": "TWIN-56 now.\n"})
    assert (await env.ingest(newer / "twin.md", owner=BOB, source_prefix=UPLOADS)).ok
    rows = await _rows(env)
    assert rows[(ALICE, source)] == {digest}
    assert rows[(BOB, source)] == {file_hash(newer / "twin.md")}


async def test_an_owners_folder_run_removes_only_its_own_missing_files(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    env = await _written(open_env, tmp_path)
    before = await _rows(env)
    # Alice's folder now lacks secret.md, which bob (and the team folder) still have.
    folder = write_files(tmp_path / "alice-folder", {"alice-only.md": ALICE_FILES["alice-only.md"]})
    report = await env.ingest(folder, owner=ALICE, source_prefix=UPLOADS)
    assert {(o.source, o.status) for o in report.outcomes} == {
        ("uploads/alice-only.md", "unchanged"),
        ("uploads/secret.md", "removed"),
    }
    after = await _rows(env)
    assert after == {k: v for k, v in before.items() if k != (ALICE, "uploads/secret.md")}


async def test_a_folder_run_never_removes_uploads(open_env: OpenEnv, tmp_path: Path) -> None:
    env = await _written(open_env, tmp_path)
    before = await _rows(env)
    # The team folder loses secret.md; the uploads of that name are not the folder's.
    folder = write_files(tmp_path / "team-now", {"handbook.md": TEAM["handbook.md"]})
    report = await env.ingest(folder)
    assert {(o.source, o.status) for o in report.outcomes} == {
        ("handbook.md", "unchanged"),
        ("secret.md", "removed"),
    }
    after = await _rows(env)
    assert after == {k: v for k, v in before.items() if k != (SHARED, "secret.md")}
    # Even a folder whose files are named like uploads writes and removes shared rows only.
    lookalike = write_files(tmp_path / "lookalike", {"uploads/alice-only.md": "Not alice's.\n"})
    assert (await env.ingest(lookalike)).ok
    assert (await _rows(env))[(ALICE, "uploads/alice-only.md")] == before[
        (ALICE, "uploads/alice-only.md")
    ]


async def test_remove_sources_of_one_owner(open_env: OpenEnv, tmp_path: Path) -> None:
    env = await _written(open_env, tmp_path)
    store = env.store
    before = await _rows(env)

    dry = await remove_sources(store, [], owner=ALICE, dry_run=True)
    assert {(s.owner, s.source) for s in dry.sources} == OWN_ROWS[ALICE] and dry.rows == 2
    assert await _rows(env) == before, "a dry run deletes nothing"

    bobs = await remove_sources(store, ["*secret.md"], owner=BOB)
    assert {(s.owner, s.source) for s in bobs.sources} == OWN_ROWS[BOB]
    assert await _rows(env) == {k: v for k, v in before.items() if k[0] != BOB}
    assert await source_names(store, BOB) == ["handbook.md", "secret.md"]

    alices = await remove_sources(store, [], owner=ALICE)
    assert alices.rows == 2 and await env.count(owned_by(ALICE)) == 0
    assert set(await _rows(env)) == SHARED_ROWS, "the shared files stay"

    assert (await remove_sources(store, [], owner="carol")).sources == []


async def test_remove_sources_without_an_owner_removes_every_owners_copy(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    env = await _written(open_env, tmp_path)
    removal = await remove_sources(env.store, ["uploads/secret.md"])
    assert {(s.owner, s.source) for s in removal.sources} == {
        (ALICE, "uploads/secret.md"),
        (BOB, "uploads/secret.md"),
    }
    assert set(await _rows(env)) == SHARED_ROWS | {(ALICE, "uploads/alice-only.md")}
