"""The `rag` console script, run as a subprocess exactly as a user runs it.

Each command (ingest, search, doctor) and each exit code runs as the real script at least
once; checks that only vary the input (a second ingest, odd file names, a skipped file,
Markdown in a hit) run in-process through ``invoke_rag``: the same Typer app and output,
without seconds of start-up per command.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from milvus_lite.server_manager import server_manager_instance

from rag.embeddings import LocalMiniLMEmbeddings
from tests.conftest import OpenEnv, copy_samples, fake_embeddings_env, run_rag, write_files
from tests.support.cli_inprocess import invoke_rag
from tests.support.fake_openai import FakeServer

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(32)
COPIED = ["onboarding_guide.md", "it_helpdesk_guide.txt", "price_list_2025.pdf"]


def summary(output: str) -> dict[str, int]:
    """The numbers of the closing "Ingest summary" table, by column name."""
    lines = [line for line in output.splitlines() if "│" in line or "┃" in line]
    header = next(line for line in lines if "added" in line and "failed" in line)
    names = [cell.strip() for cell in re.split(r"[┃│]", header) if cell.strip()]
    row = next(line for line in lines if re.search(r"│\s*\d", line))
    values = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert len(names) == len(values), (names, values)
    return {name: int(float(value)) for name, value in zip(names, values, strict=True)}


def fake_embeddings_settings(server: FakeServer) -> dict[str, object]:
    return {
        "embedding_provider": "openai",
        "embedding_base_url": server.base_url,
        "embedding_dimensions": 384,
    }


@dataclass
class Ingested:
    folder: Path
    workdir: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """Three sample documents ingested by `rag ingest` with the local model."""
    workdir = tmp_path_factory.mktemp("cli")
    folder = copy_samples(workdir / "docs", COPIED)
    env = {"RAG_MILVUS_URI": str(workdir / "milvus.db"), "RAG_COLLECTION": "cli_docs"}
    first = run_rag("ingest", str(folder), cwd=workdir, timeout=180, **env)
    return Ingested(folder, workdir, env, first)


def test_ingest_prints_progress_and_summary(ingested: Ingested) -> None:
    result = ingested.first
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    out = result.stdout
    assert "found 3 files" in out
    for name in COPIED:
        assert re.search(rf"^added: {re.escape(name)} \(\d+ chunks\)$", out, re.M), out
    numbers = summary(out)
    assert numbers["added"] == 3
    assert numbers["unchanged"] == numbers["failed"] == numbers["removed"] == 0
    chunks = sum(int(n) for n in re.findall(r"^added: \S+ \((\d+) chunks\)$", out, re.M))
    assert numbers["chunks written"] == chunks > 3


def test_second_ingest_shows_all_unchanged(
    ingested: Ingested, local_embeddings: LocalMiniLMEmbeddings
) -> None:
    result = invoke_rag(
        "ingest",
        str(ingested.folder),
        cwd=ingested.workdir,
        embeddings=local_embeddings,
        **ingested.env,
    )
    assert result.returncode == 0, result.stderr
    numbers = summary(result.stdout)
    assert numbers["unchanged"] == 3
    assert numbers["added"] == numbers["updated"] == numbers["chunks written"] == 0
    for name in COPIED:
        assert f"unchanged: {name}" in result.stdout


def test_search_prints_a_hit(ingested: Ingested) -> None:
    result = run_rag(
        "search",
        "What time does a new employee's first day start?",
        "-k",
        "2",
        cwd=ingested.workdir,
        **ingested.env,
    )
    assert result.returncode == 0, result.stderr
    assert "Top 2 for: What time does a new employee's first day start?" in result.stdout
    rows = [line for line in result.stdout.splitlines() if re.match(r"│ [12] ", line)]
    assert len(rows) == 2
    assert "onboarding_guide.md" in rows[0]
    assert re.search(r"│ 1 │ 0\.\d{3} │", result.stdout)


def test_doctor_masks_the_token(ingested: Ingested) -> None:
    result = run_rag(
        "doctor",
        cwd=ingested.workdir,
        RAG_MILVUS_TOKEN="secret123",
        RAG_EMBEDDING_API_KEY="sk-embed-secret",
        **ingested.env,
    )
    everything = result.stdout + result.stderr
    assert "secret123" not in everything
    assert "sk-embed-secret" not in everything
    assert re.search(r"RAG_MILVUS_TOKEN\s+│\s+\*{8}", result.stdout)
    assert re.search(r"RAG_MILVUS_URI\s+│\s+\S*milvus\.db", result.stdout)
    assert re.search(r"^ok\s+milvus: collection 'cli_docs': \d+ rows", result.stdout, re.M)
    assert re.search(r"^ok\s+embeddings: ", result.stdout, re.M)


def test_exit_code_1_when_a_file_failed(tmp_path: Path, fake_openai: FakeServer) -> None:
    folder = write_files(
        tmp_path / "docs",
        {"good.md": "# Good\n\nAnchor nuts: 40 Nm.", "broken.pdf": b"%PDF-1.4 not really"},
    )
    result = run_rag(
        "ingest",
        str(folder),
        cwd=tmp_path,
        RAG_MILVUS_URI=str(tmp_path / "m.db"),
        **fake_embeddings_env(fake_openai.base_url),
    )
    assert result.returncode == 1, result
    assert "failed: broken.pdf: corrupt or unreadable PDF" in result.stdout
    assert "added: good.md (1 chunks)" in result.stdout
    assert summary(result.stdout)["failed"] == 1
    assert "some files failed" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_exit_code_0_when_only_skipped_and_excluded(
    tmp_path: Path, fake_openai: FakeServer
) -> None:
    folder = write_files(
        tmp_path / "docs",
        {"good.md": "# Good\n\nAnchor nuts: 40 Nm.", "empty.txt": "", "broken.pdf": b"junk"},
    )
    result = invoke_rag(
        "ingest",
        str(folder),
        "--exclude",
        "*.pdf",
        cwd=tmp_path,
        RAG_MILVUS_URI=str(tmp_path / "m.db"),
        **fake_embeddings_env(fake_openai.base_url),
    )
    assert result.returncode == 0, result
    assert "skipped: empty.txt: no text to index" in result.stdout
    assert "broken.pdf" not in result.stdout
    numbers = summary(result.stdout)
    assert (numbers["added"], numbers["skipped"], numbers["failed"]) == (1, 1, 0)


def test_file_names_with_brackets_are_printed_as_they_are(
    tmp_path: Path, fake_openai: FakeServer
) -> None:
    """Progress lines are rich markup: a name like "report[final].md" must not be eaten,
    and "a[/]b.md" (folder "a[", file "]b.md") must not crash the run."""
    folder = write_files(
        tmp_path / "docs",
        {
            "report[final].md": "# Report\n\nFinal numbers.",
            "scan[v2].txt": PNG,
            "a[/]b.md": "# Odd\n\nOdd path.",
        },
    )
    result = invoke_rag(
        "ingest",
        str(folder),
        cwd=tmp_path,
        RAG_MILVUS_URI=str(tmp_path / "m.db"),
        **fake_embeddings_env(fake_openai.base_url),
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 1, result
    assert "added: report[final].md (1 chunks)" in result.stdout
    assert "added: a[/]b.md (1 chunks)" in result.stdout
    assert "failed: scan[v2].txt: binary content (NUL bytes) in a text file" in result.stdout


def test_error_message_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    missing = tmp_path / "docs[draft]"
    result = run_rag(
        "ingest", str(missing), cwd=tmp_path, timeout=120, RAG_MILVUS_URI=str(tmp_path / "m.db")
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: no such file or folder: {missing}"


async def test_search_shows_markdown_links_verbatim(
    open_env: OpenEnv, fake_openai: FakeServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "m.db")
    text = "# Links\n\nSee [the manual](https://example.com/manual) for torque values.\n"
    folder = write_files(tmp_path / "docs", {"links.md": text})
    env = await open_env(milvus_uri=db, collection="links", **fake_embeddings_settings(fake_openai))
    assert (await env.ingest(folder)).ok
    env.store.client.close()
    server_manager_instance.release_server(db)  # the CLI opens the file itself

    # In a thread: the command runs its own event loop (asyncio.run), this test's is busy.
    result = await asyncio.to_thread(
        invoke_rag,
        "search",
        "manual torque values",
        "-k",
        "1",
        cwd=tmp_path,
        RAG_MILVUS_URI=db,
        RAG_COLLECTION="links",
        **fake_embeddings_env(fake_openai.base_url),
    )
    assert result.returncode == 0, result.stderr
    assert "links.md" in result.stdout
    assert "[the manual](https://example.com/manual)" in result.stdout
