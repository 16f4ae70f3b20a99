"""`rag search --as OWNER` and `rag ask --as OWNER` see what that owner's chat sees: the
shared documents plus their own uploads; without `--as`, the shared documents only."""

from __future__ import annotations

import json
from pathlib import Path

from milvus_lite.server_manager import server_manager_instance

from ingest.pipeline import ingest_path
from ingest.uploads import add_upload, display_name
from rag.services import open_services
from tests.conftest import fake_models_env, make_settings, run_rag, write_files
from tests.support.fake_openai import FakeServer

QUESTION = "What is the heron code?"


async def test_search_and_ask_as_an_owner_include_their_uploads(
    tmp_path: Path, fake_openai: FakeServer
) -> None:
    env = {
        **fake_models_env(fake_openai.base_url),
        "RAG_MILVUS_URI": str(tmp_path / "m.db"),
        "RAG_COLLECTION": "people",
        "RAG_RELEVANCE_FLOOR": "0",
        "RAG_UPLOAD_DIR": str(tmp_path / "uploads"),
    }
    settings = make_settings(
        env["RAG_MILVUS_URI"],
        "people",
        embedding_provider="openai",
        embedding_base_url=fake_openai.base_url,
        embedding_dimensions=384,
        upload_dir=env["RAG_UPLOAD_DIR"],
    )
    docs = write_files(tmp_path / "docs", {"birds.md": "# Birds\n\nHerons wade in shallow water."})
    incoming = tmp_path / "incoming"
    incoming.write_text("The heron code is HX-77.", encoding="utf-8")
    async with open_services(settings, recreate=True) as services:
        assert (await ingest_path(docs, services.store, settings)).ok
        upload = await add_upload(
            services.store, settings, owner="alice", name="heron.txt", temp_path=incoming
        )
        assert upload.problem is None, upload
    server_manager_instance.release_server(env["RAG_MILVUS_URI"])  # the CLI opens the file

    def search(*extra: str) -> str:
        result = run_rag("search", QUESTION, "-k", "5", *extra, cwd=tmp_path, **env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "birds.md" in search() and "heron.txt" not in search()
    as_alice = search("--as", "alice")
    assert "birds.md" in as_alice and "heron.txt" in as_alice
    assert "heron.txt" not in search("--as", "bob")

    def sources(*extra: str) -> set[str]:
        result = run_rag("ask", QUESTION, "--json", *extra, cwd=tmp_path, **env)
        assert result.returncode == 0, result.stderr
        return {hit["source"] for hit in json.loads(result.stdout)["sources"]}

    assert sources() == {"birds.md"}
    assert "heron.txt (uploaded)" in {display_name(s) for s in sources("--as", "alice")}
