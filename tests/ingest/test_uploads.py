"""Chat uploads never land outside the upload folder, whatever name the browser sends, and
each is its owner's: stored in the owner's folder under a name no other file shares, and
found only by the owner's searches (Milvus Lite, embedded by the loopback fake server)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ingest.uploads import (
    DIGEST_CHARS,
    MAX_NAME,
    UploadRejected,
    UploadResult,
    add_upload,
    content_digest,
    display_name,
    owner_folder,
    safe_name,
    store_upload,
    stored_name,
)
from rag.retrieval import SearchOptions, retrieve
from rag.store.catalog import list_sources, source_names
from rag.store.schema import SHARED
from tests.conftest import IngestEnv
from tests.support.fake_openai import FakeServer


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../outside/secret.txt", "secret.txt"),
        ("/etc/shadow.md", "shadow.md"),
        ("..\\..\\windows\\system.ini.txt", "system.ini.txt"),
        ("evil\x00.txt", "evil_.txt"),
        ("Notes (v2) – final.DOCX", "Notes _v2_ _ final.docx"),
        ("...", "upload"),
        ("", "upload"),
    ],
)
def test_safe_name_drops_folders_and_odd_characters(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_safe_name_bounds_the_length_and_keeps_the_suffix() -> None:
    name = safe_name("a" * 500 + ".pdf")
    assert len(name) <= MAX_NAME and name.endswith(".pdf")


def _temp(tmp_path: Path, size: int = 10) -> Path:
    source = tmp_path / "incoming.bin"
    source.write_bytes(b"x" * size)
    return source


@pytest.mark.parametrize("name", ["../../escape.txt", "/abs/escape.txt", "sub/dir/escape.txt"])
def test_store_upload_stays_inside_the_upload_folder(tmp_path: Path, name: str) -> None:
    uploads = tmp_path / "uploads"
    stored = store_upload(uploads, name, _temp(tmp_path), max_bytes=1000)
    assert stored.parent == uploads.resolve()
    assert stored.read_bytes() == b"x" * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incoming.bin", "uploads"]


def test_store_upload_refuses_unsupported_types(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match=r"unsupported type \.exe"):
        store_upload(tmp_path / "u", "setup.exe", _temp(tmp_path), max_bytes=1000)
    assert not (tmp_path / "u").exists()


def test_store_upload_refuses_files_over_the_limit(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match="upload limit"):
        store_upload(tmp_path / "u", "big.txt", _temp(tmp_path, 2000), max_bytes=1000)


def test_duplicate_names_replace_the_earlier_upload(tmp_path: Path) -> None:
    uploads = tmp_path / "u"
    first = store_upload(uploads, "notes.txt", _temp(tmp_path, 5), max_bytes=1000)
    second = store_upload(uploads, "notes.txt", _temp(tmp_path, 7), max_bytes=1000)
    assert first == second and second.stat().st_size == 7
    assert [p.name for p in uploads.iterdir()] == ["notes.txt"]


# --- one folder per owner, one file per content -----------------------------------------------


def test_owner_folders_are_hashes_that_keep_owners_apart() -> None:
    names = {owner: owner_folder(owner) for owner in ("alice", "bob", "thread:1", "../../x")}
    assert len(set(names.values())) == len(names)
    for folder in names.values():
        assert re.fullmatch(r"[0-9a-f]{16}", folder), folder
    assert owner_folder("alice") == owner_folder("alice")


def test_store_upload_never_leaves_a_partial_file_behind(tmp_path: Path) -> None:
    uploads = tmp_path / "u"
    store_upload(uploads, "notes.txt", _temp(tmp_path, 5), max_bytes=1000)
    with pytest.raises(UploadRejected):
        store_upload(uploads, "notes.txt", _temp(tmp_path, 2000), max_bytes=1000)
    assert [p.name for p in uploads.iterdir()] == ["notes.txt"]


@pytest.fixture
async def uploads_env(
    open_env: Any, fake_openai: FakeServer, tmp_path: Path
) -> AsyncIterator[IngestEnv]:
    """A fresh collection on Milvus Lite, embedded by the loopback fake server."""
    env = await open_env(
        embedding_provider="openai",
        embedding_base_url=fake_openai.base_url,
        embedding_dimensions=384,
        upload_dir=str(tmp_path / "uploads"),
    )
    try:
        yield env
    finally:
        await env.services.aclose()


def _incoming(tmp_path: Path, text: str) -> Path:
    """A temp file as Chainlit leaves an upload: its own name, nothing to do with the user's."""
    path = tmp_path / "incoming" / uuid.uuid4().hex
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


async def _add(env: IngestEnv, tmp_path: Path, owner: str, name: str, text: str) -> UploadResult:
    return await add_upload(
        env.store, env.settings, owner=owner, name=name, temp_path=_incoming(tmp_path, text)
    )


async def test_an_upload_is_stored_and_searched_as_its_owners(
    uploads_env: IngestEnv, tmp_path: Path
) -> None:
    result = await _add(uploads_env, tmp_path, "alice", "../heron.txt", "The heron code is HX-77.")
    assert result.problem is None and result.passages == 1, result
    assert result.line == "✅ heron.txt: 1 passage added"
    folder = owner_folder("alice")
    assert re.fullmatch(rf"uploads/{folder}/[0-9a-f]{{12}}-heron\.txt", result.source)
    stored = tmp_path / "uploads" / result.source.removeprefix("uploads/")
    assert stored.read_text(encoding="utf-8") == "The heron code is HX-77."
    (info,) = await list_sources(uploads_env.store)
    assert (info.source, info.owner, info.complete) == (result.source, "alice", True)
    assert await source_names(uploads_env.store, "alice") == [result.source]
    assert await source_names(uploads_env.store, "bob") == []
    assert await source_names(uploads_env.store) == []
    question = "What is the heron code?"
    for viewer, found in (("alice", [result.source]), ("bob", []), ("", [])):
        hits = await retrieve(uploads_env.store, question, SearchOptions(viewer=viewer))
        assert [hit.source for hit in hits] == found, viewer


async def test_same_name_from_two_owners_or_with_new_content_is_another_file(
    uploads_env: IngestEnv, tmp_path: Path
) -> None:
    first = await _add(uploads_env, tmp_path, "alice", "notes.txt", "Gate code one is 1111.")
    again = await _add(uploads_env, tmp_path, "alice", "notes.txt", "Gate code one is 1111.")
    other = await _add(uploads_env, tmp_path, "bob", "notes.txt", "Gate code one is 1111.")
    newer = await _add(uploads_env, tmp_path, "alice", "notes.txt", "Gate code two is 2222.")
    assert again.source == first.source and again.unchanged, again
    assert again.line == "✅ notes.txt: already added (1 passage)"
    assert len({first.source, other.source, newer.source}) == 3
    listed = {(i.source, i.owner, i.chunks) for i in await list_sources(uploads_env.store)}
    assert listed == {
        (first.source, "alice", 1),
        (other.source, "bob", 1),
        (newer.source, "alice", 1),
    }
    files = {"uploads/" + p.relative_to(tmp_path / "uploads").as_posix() for p in _files(tmp_path)}
    assert files == {first.source, other.source, newer.source}


def _files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]


async def test_refused_uploads_are_reported_and_store_nothing(
    uploads_env: IngestEnv, tmp_path: Path
) -> None:
    wrong = await _add(uploads_env, tmp_path, "alice", "setup.exe", "MZ")
    assert wrong.line.startswith("❌ setup.exe: unsupported type .exe"), wrong.line
    limit = int(uploads_env.settings.upload_max_mb * 1024 * 1024)
    big = await _add(uploads_env, tmp_path, "alice", "big.txt", "x" * (limit + 1))
    assert big.line.startswith("❌ big.txt:") and "upload limit" in big.line, big.line
    assert await list_sources(uploads_env.store) == [] and _files(tmp_path) == []
    with pytest.raises(ValueError, match="owner"):
        await _add(uploads_env, tmp_path, SHARED, "shared.txt", "Everyone sees this.")


async def test_twenty_concurrent_uploads_from_two_owners_all_keep_their_rows(
    uploads_env: IngestEnv, tmp_path: Path
) -> None:
    """Half under one name: same owner and content twice, and same name, other contents."""
    jobs = []
    for n in range(20):
        owner = ("alice", "bob")[n % 2]
        # same.txt: alice sends contents 0, 2, 0, 2, 0 and bob 1, 3, 1, 3, 1
        name, fact = ("same.txt", n % 4) if n < 10 else (f"file-{n}.txt", n)
        jobs.append((owner, name, f"Fact {fact}: the code of {owner} is C-{fact}."))
    results = await asyncio.gather(*(_add(uploads_env, tmp_path, *job) for job in jobs))
    assert all(r.problem is None for r in results), [r.line for r in results]
    expected = {(r.source, owner) for r, (owner, _, _) in zip(results, jobs, strict=True)}
    # same.txt is four files (two contents from each owner), plus the ten other names
    assert len(expected) == 14, sorted(expected)
    infos = await list_sources(uploads_env.store)
    assert {(i.source, i.owner) for i in infos} == expected
    assert all(i.complete and i.chunks >= 1 for i in infos), infos
    assert await uploads_env.count() == sum(i.chunks for i in infos)
    assert len(_files(tmp_path)) == 14


def test_uploads_are_shown_by_the_name_they_were_given() -> None:
    assert display_name("uploads/0123456789abcdef/0123456789ab-heron.txt") == (
        "heron.txt (uploaded)"
    )
    assert display_name("manuals/heron.txt") == "manuals/heron.txt"
    assert display_name("uploads/heron.txt") == "uploads/heron.txt"  # not one of ours


# --- an upload is known by the name its owner gave it -----------------------------------------


def test_display_name_reads_back_the_name_add_upload_stores_by(tmp_path: Path) -> None:
    upload = tmp_path / "x.txt"
    upload.write_text("some text", encoding="utf-8")
    digest = content_digest(upload)
    assert len(digest) == DIGEST_CHARS
    source = f"uploads/{owner_folder('alice')}/{stored_name(digest, 'Heron notes.txt')}"
    assert display_name(source) == "Heron notes.txt (uploaded)"
    # a shared document, or one whose folder is not an owner hash, keeps its own name
    assert display_name("guides/heron.txt") == "guides/heron.txt"
    assert display_name(f"uploads/alice/{digest}-heron.txt") == f"uploads/alice/{digest}-heron.txt"


async def test_an_untitled_upload_is_titled_by_its_given_name(
    uploads_env: IngestEnv, tmp_path: Path
) -> None:
    """In the passage's title and the text the model reads, never "<digest>-<name>"."""
    result = await _add(uploads_env, tmp_path, "alice", "heron_notes.txt", "The heron code.")
    assert result.problem is None and result.passages == 1, result
    (row,) = await uploads_env.store.aclient.query(
        uploads_env.settings.collection, filter="", output_fields=["title", "text"], limit=10
    )
    assert row["title"] == "heron_notes"
    digest = result.source.rsplit("/", 1)[-1].split("-", 1)[0]
    assert "heron notes" in row["text"] and digest not in row["text"]
