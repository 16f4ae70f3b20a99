"""`rag search --as OWNER` and `rag ask --as OWNER` see what that owner's chat sees: the
shared documents plus their own uploads; without `--as`, the shared documents only.

`--as alice` runs as the console script; the comparisons around it run in-process
(``invoke_rag``), which shows the same output without a process start each."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from milvus_lite.server_manager import server_manager_instance

from ingest.pipeline import ingest_path
from ingest.uploads import add_upload, display_name
from rag.services import open_services
from tests.conftest import fake_models_env, make_settings, run_rag, write_files
from tests.support.cli_inprocess import invoke_rag
from tests.support.fake_openai import FakeServer

QUESTION = "What is the heron code?"


def test_search_and_ask_as_an_owner_include_their_uploads(
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

    async def fill() -> None:
        async with open_services(settings, recreate=True) as services:
            assert (await ingest_path(docs, services.store, settings)).ok
            upload = await add_upload(
                services.store, settings, owner="alice", name="heron.txt", temp_path=incoming
            )
            assert upload.problem is None, upload

    # A sync test with its own loop: the in-process CLI calls asyncio.run itself.
    asyncio.run(fill())
    server_manager_instance.release_server(env["RAG_MILVUS_URI"])  # the CLI opens the file

    def search(*extra: str, process: bool = False) -> str:
        result = (run_rag if process else invoke_rag)(
            "search", QUESTION, "-k", "5", *extra, cwd=tmp_path, **env
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "birds.md" in search() and "heron.txt" not in search()
    as_alice = search("--as", "alice", process=True)
    assert "birds.md" in as_alice and "heron.txt" in as_alice
    assert "heron.txt" not in search("--as", "bob")

    def sources(*extra: str, process: bool = False) -> set[str]:
        run = run_rag if process else invoke_rag
        result = run("ask", QUESTION, "--json", *extra, cwd=tmp_path, **env)
        assert result.returncode == 0, result.stderr
        return {hit["source"] for hit in json.loads(result.stdout)["sources"]}

    assert sources() == {"birds.md"}
    as_alice_sources = sources("--as", "alice", process=True)
    assert "heron.txt (uploaded)" in {display_name(s) for s in as_alice_sources}
