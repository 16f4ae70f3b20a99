"""`rag sources`, `rag remove`, `rag collections`, `rag drop` on Milvus Lite, as a user runs them.

Each command runs at least once as the real console script (``Workspace.process``); the
many follow-up commands that check what a change left behind run in-process through
typer's CliRunner (``Workspace.rag``), which skips seconds of start-up per command.
The server paths (milvus-lite server, Milvus standalone) are covered in
tests/rag/test_server_path.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient

from rag.embeddings import LocalMiniLMEmbeddings
from tests.conftest import RAG_BIN, SAMPLE_DOCS, cli_env, run_rag
from tests.support.cli_inprocess import invoke_rag
from tests.support.rows import chunk_row

COPIED = ["onboarding_guide.md", "it_helpdesk_guide.txt", "price_list_2025.pdf"]


@dataclass
class Workspace:
    folder: Path
    workdir: Path
    env: dict[str, str]
    embeddings: LocalMiniLMEmbeddings

    def process(self, *args: str, timeout: float = 120) -> tuple[int, str, str]:
        """``rag ARGS`` as the console script, in its own process."""
        result = run_rag(*args, cwd=self.workdir, timeout=timeout, **self.env)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, result.stdout, result.stderr

    def rag(self, *args: str) -> tuple[int, str, str]:
        """``rag ARGS`` in this process (the session's local model), same exit and output."""
        result = invoke_rag(*args, cwd=self.workdir, embeddings=self.embeddings, **self.env)
        return result.returncode, result.stdout, result.stderr

    def sources(self, *, process: bool = False) -> dict[str, dict[str, object]]:
        code, out, err = (self.process if process else self.rag)("sources", "--json")
        assert code == 0, err
        return {entry["source"]: entry for entry in json.loads(out)}

    def upload(self, owner: str, source: str, chunks: int) -> None:
        """Rows of a private upload, written straight into the database file (the chat
        writes them through the ingest; no command line writes for an owner)."""
        uri = self.env["RAG_MILVUS_URI"]
        client = MilvusClient(uri=uri)
        try:
            rows = [
                chunk_row(
                    source,
                    index,
                    chunks,
                    vector=[0.05] * 384,
                    owner=owner,
                    text=f"chunk {index} of {owner}'s {source}",
                )
                for index in range(chunks)
            ]
            client.insert(self.env["RAG_COLLECTION"], rows)
        finally:
            client.close()
            server_manager_instance.release_server(uri)  # the next `rag` opens the file


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, local_embeddings: LocalMiniLMEmbeddings
) -> Workspace:
    workdir = tmp_path_factory.mktemp("collections")
    folder = workdir / "docs"
    folder.mkdir()
    for name in COPIED:
        shutil.copy(SAMPLE_DOCS / name, folder / name)
    env = {"RAG_MILVUS_URI": str(workdir / "milvus.db"), "RAG_COLLECTION": "team_docs"}
    space = Workspace(folder, workdir, env, local_embeddings)
    code, _, err = space.process("ingest", str(folder), timeout=240)
    assert code == 0, err
    return space


def test_sources_come_from_milvus_with_hash_size_and_time(workspace: Workspace) -> None:
    listed = workspace.sources(process=True)
    assert set(listed) == set(COPIED)
    for name, entry in listed.items():
        data = (workspace.folder / name).read_bytes()
        assert entry["file_hash"] == hashlib.sha256(data).hexdigest()
        assert entry["file_size"] == len(data)
        assert entry["chunks"] == entry["expected_chunks"] > 0
        assert entry["complete"] is True
        assert datetime.fromisoformat(str(entry["ingested_at"])).tzinfo is not None

    code, table, _ = workspace.rag("sources")
    assert code == 0
    assert "3 files in team_docs" in table
    assert all(name in table for name in COPIED)


def test_sources_show_owners_and_remove_owner_takes_only_theirs(workspace: Workspace) -> None:
    before = workspace.sources()
    assert {entry["owner"] for entry in before.values()} == {""}, "folder ingests are shared"
    workspace.upload("alice", "uploads/a1/onboarding_guide.md", chunks=2)
    workspace.upload("bob", "uploads/b2/notes.md", chunks=1)

    code, table, _ = workspace.rag("sources")
    assert code == 0 and "5 files in team_docs" in table
    lines = table.splitlines()
    (alice,) = [line for line in lines if "uploads/a1/onboarding_guide.md" in line]
    assert "alice" in alice
    (shared,) = [line for line in lines if " onboarding_guide.md " in line]
    assert "shared" in shared and "alice" not in shared

    # A pattern naming the shared file's name, within alice's rows: only her copy.
    code, out, _ = workspace.process("remove", "--owner", "alice", "onboarding_guide.md", "-n")
    assert code == 0 and "would remove 2 rows from 1 files" in out
    assert "uploads/a1/onboarding_guide.md [alice]" in out
    code, out, _ = workspace.rag("remove", "--owner", "alice", "onboarding_guide.md")
    assert code == 0 and "removed 2 rows from 1 files" in out
    code, out, _ = workspace.rag("remove", "--owner", "bob")  # no pattern: all of bob's
    assert code == 0 and "removed 1 rows from 1 files" in out
    assert workspace.sources() == before, "the shared files kept every row"

    code, _, err = workspace.rag("remove", "--owner", "alice")
    assert code == 1 and "nothing matches any file of owner 'alice'" in err
    code, _, err = workspace.rag("remove")
    assert code == 2 and "--owner" in err


def test_collections_lists_model_dimension_and_rows(workspace: Workspace) -> None:
    code, out, err = workspace.process("collections", "--json")
    assert code == 0, err
    (info,) = [c for c in json.loads(out) if c["name"] == "team_docs"]
    assert info["dimension"] == 384
    assert "MiniLM" in info["embedding_model"]
    assert info["bm25"] is True, "Milvus Lite builds collections with a BM25 field"
    assert info["rows"] == sum(int(e["chunks"]) for e in workspace.sources().values())


def test_remove_dry_run_then_remove_then_reingest(workspace: Workspace) -> None:
    before = workspace.sources()
    pdf_rows = int(before["price_list_2025.pdf"]["chunks"])

    code, out, _ = workspace.rag("remove", "*.pdf", "--dry-run")
    assert code == 0
    assert f"would remove {pdf_rows} rows from 1 files" in out
    assert workspace.sources() == before, "a dry run deletes nothing"

    code, out, _ = workspace.rag("remove", "*.pdf")
    assert code == 0
    assert f"removed {pdf_rows} rows from 1 files" in out
    after = workspace.sources()
    assert set(after) == set(COPIED) - {"price_list_2025.pdf"}
    assert after == {k: v for k, v in before.items() if k != "price_list_2025.pdf"}

    code, out, _ = workspace.rag("search", "price of the Heron", "-k", "10")
    assert code == 0 and "price_list_2025.pdf" not in out

    # Ingesting the folder again puts back only what was removed.
    code, out, err = workspace.rag("ingest", str(workspace.folder))
    assert code == 0, err
    assert "added: price_list_2025.pdf" in out
    assert workspace.sources().keys() == before.keys()


@pytest.mark.parametrize("pattern", ['x" or source != "', "nothing-here.md", "*.docx"])
def test_remove_without_a_match_deletes_nothing(workspace: Workspace, pattern: str) -> None:
    before = workspace.sources()
    code, _, err = workspace.rag("remove", pattern)
    assert code == 1
    assert "nothing matches" in err
    assert workspace.sources() == before


def test_drop_asks_first_and_refuses_unknown_names(workspace: Workspace) -> None:
    other = dict(workspace.env, RAG_COLLECTION="scratch")
    result = invoke_rag(
        "ingest",
        str(workspace.folder / "onboarding_guide.md"),
        cwd=workspace.workdir,
        embeddings=workspace.embeddings,
        **other,
    )
    assert result.returncode == 0, result.stderr
    code, out, _ = workspace.rag("collections")
    assert "scratch" in out and "team_docs (default)" in out

    refused = subprocess.run(
        [str(RAG_BIN), "drop", "scratch"],
        input="n\n",
        cwd=workspace.workdir,
        env=cli_env(**workspace.env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and "nothing deleted" in refused.stderr
    code, out, _ = workspace.rag("collections", "--json")
    assert "scratch" in {c["name"] for c in json.loads(out)}

    code, out, _ = workspace.process("drop", "scratch", "--yes")
    assert code == 0 and "dropped 'scratch'" in out
    code, out, _ = workspace.rag("collections", "--json")
    assert {c["name"] for c in json.loads(out)} == {"team_docs"}

    code, _, err = workspace.rag("drop", "scratch", "--yes")
    assert code == 2 and "no collection named 'scratch'" in err
