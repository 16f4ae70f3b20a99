"""An upload is known by the name its owner gave it: in the chat's source list, in the
passage's title and in the text the model reads, never by its stored "<digest>-<name>"."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ingest.uploads import (
    DIGEST_CHARS,
    add_upload,
    content_digest,
    display_name,
    owner_folder,
    stored_name,
)
from tests.support.fake_openai import FakeServer


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
    open_env: Any, fake_openai: FakeServer, tmp_path: Path
) -> None:
    env = await open_env(
        embedding_provider="openai",
        embedding_base_url=fake_openai.base_url,
        embedding_dimensions=384,
        upload_dir=str(tmp_path / "uploads"),
    )
    try:
        incoming = tmp_path / "incoming.bin"
        incoming.write_text("The heron code is HX-77.", encoding="utf-8")
        result = await add_upload(
            env.store, env.settings, owner="alice", name="heron_notes.txt", temp_path=incoming
        )
        assert result.problem is None and result.passages == 1, result
        (row,) = await env.store.aclient.query(
            env.settings.collection,
            filter="",
            output_fields=["title", "text", "source"],
            limit=10,
        )
        assert row["source"] == result.source and re.search(r"/[0-9a-f]{12}-", row["source"])
        assert row["title"] == "heron_notes"
        assert "heron notes" in row["text"] and content_digest(incoming) not in row["text"]
    finally:
        await env.services.aclose()
