"""The `rag` CLI end to end against Milvus *servers*, as a user with a deployed Milvus runs it.

Two servers, each started once: ``milvus-lite server`` (the Lite engine over gRPC) and
``milvus-server`` (Milvus 2.3.5 standalone from PyPI, a real Milvus that predates BM25).
Per server, one collection goes through: ingest the sample corpus; then, side by side, a
re-ingest (must write nothing), search, ask --json, hybrid search, sources and collections;
then remove --dry-run, remove and drop. Each `rag` process spends seconds starting up,
and the standalone makes every Strong-consistency read wait for its time tick, so the
read-only commands run concurrently (as several users would) and the tests then check
what each printed.

The fake OpenAI server serves both the embeddings (fast and deterministic, so the corpus
ingests in seconds) and the chat model. Its bag-of-words vectors score lower than a real
model, so the relevance floor is 0: these tests are about the server path, not ranking.

Every command runs with RAG_MILVUS_TOKEN set to a recognisable secret (both servers run
without authorization and ignore it, while pymilvus still sends it with each call), and no
output may contain it: not a table, not an error line, not `rag doctor`, not debug logs.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymilvus import MilvusClient

from tests.conftest import SAMPLE_DOCS, free_port, run_rag, sample_sources, write_files
from tests.support.fake_openai import FakeServer, serve
from tests.support.milvus_standalone import milvus_standalone  # noqa: F401 - a fixture

pytestmark = [pytest.mark.server, pytest.mark.slow]

Run = subprocess.CompletedProcess[str]
COLLECTION = "server_path"
QUESTION = "Who needs to approve an expense claim of EUR 1,200?"
EXPENSES = ("employee_handbook_2025.pdf", 3)  # the page with the approval table
CANARY = "S3cr3t-Canary-7781"  # a token no output may ever contain
READS = {  # run side by side once the corpus is in
    "reingest": ("ingest", str(SAMPLE_DOCS)),
    "search": ("search", QUESTION, "-k", "4"),
    "ask": ("ask", "--json", QUESTION),
    "hybrid": ("-v", "search", QUESTION, "--mode", "hybrid", "-k", "4"),
    "sources": ("sources", "--json"),
    "collections": ("collections", "--json"),
}


def assert_no_canary(*runs: Run) -> None:
    for run in runs:
        assert CANARY not in run.stdout + run.stderr, run.stdout + run.stderr


def json_out(run: Run) -> Any:
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def summary(stdout: str) -> dict[str, str]:
    """The ingest summary table as {column: value}."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "┃ added ┃" in line)
    names = [c.strip() for c in lines[header].split("┃") if c.strip()]
    values_line = next(line for line in lines[header + 1 :] if line.startswith("│"))
    values = [c.strip() for c in values_line.split("│") if c.strip()]
    return dict(zip(names, values, strict=True))


def rag_variables(uri: str, openai: FakeServer) -> dict[str, str]:
    return {
        "RAG_MILVUS_URI": uri,
        "RAG_MILVUS_TOKEN": f"root:{CANARY}",
        "RAG_COLLECTION": COLLECTION,
        "RAG_MILVUS_TIMEOUT": "30",
        "RAG_EMBEDDING_PROVIDER": "openai",
        "RAG_EMBEDDING_BASE_URL": openai.base_url,
        "RAG_EMBEDDING_API_KEY": "test",
        "RAG_LLM_BASE_URL": openai.base_url,
        "RAG_LLM_MODEL": "fake",
        "RAG_LLM_API_KEY": "test",
        "RAG_RELEVANCE_FLOOR": "0",
    }


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeServer]:
    with serve() as server:
        yield server


@dataclass
class Target:
    """One Milvus server, the environment every `rag` command gets, and what they printed."""

    kind: str  # "lite-server" or "standalone"
    uri: str
    cwd: Path
    variables: dict[str, str]
    runs: dict[str, Run] = field(default_factory=dict)
    ingested: dict[str, tuple[str, str]] = field(default_factory=dict)  # rows after ingest
    chat_requests: list[dict[str, Any]] = field(default_factory=list)  # during READS

    def rag(self, *args: str, timeout: float = 120) -> Run:
        run = run_rag(*args, cwd=self.cwd, timeout=timeout, **self.variables)
        assert_no_canary(run)
        return run

    def rows(self) -> dict[str, tuple[str, str]]:
        """pk -> (file_hash, ingested_at) of every row, read directly from the server."""
        client = MilvusClient(uri=self.uri, timeout=30)
        try:
            rows = client.query(
                COLLECTION,
                filter='pk != ""',
                output_fields=["pk", "file_hash", "ingested_at"],
                limit=16_384,
            )
        finally:
            client.close()
        return {r["pk"]: (r["file_hash"], r["ingested_at"]) for r in rows}


@pytest.fixture(scope="module", params=["lite-server", "standalone"])
def target(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    openai_server: FakeServer,
) -> Target:
    """The corpus ingested on one server, then READS run side by side against it."""
    fixture = "milvus_server" if request.param == "lite-server" else "milvus_standalone"
    uri = request.getfixturevalue(fixture)
    cwd = tmp_path_factory.mktemp(f"cwd-{request.param}")  # no .env here
    target = Target(request.param, uri, cwd, rag_variables(uri, openai_server))
    target.runs["ingest"] = first = target.rag("ingest", str(SAMPLE_DOCS), timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    target.ingested = target.rows()
    openai_server.fake.reset()
    with ThreadPoolExecutor(len(READS)) as pool:
        started = {name: pool.submit(target.rag, *args) for name, args in READS.items()}
        target.runs |= {name: future.result() for name, future in started.items()}
    target.chat_requests = openai_server.fake.chat_requests()
    return target


def test_ingest_writes_every_file_and_a_rerun_rewrites_nothing(target: Target) -> None:
    first, again = summary(target.runs["ingest"].stdout), target.runs["reingest"]
    assert first["added"] == str(len(sample_sources())), target.runs["ingest"].stdout
    assert first["failed"] == "0", target.runs["ingest"].stdout + target.runs["ingest"].stderr
    for source in sample_sources():
        assert f"added: {source}" in target.runs["ingest"].stdout
    assert len(target.ingested) == int(first["chunks written"])

    assert again.returncode == 0, again.stdout + again.stderr
    second = summary(again.stdout)
    assert second["unchanged"] == str(len(sample_sources())), again.stdout
    assert (second["added"], second["updated"], second["removed"]) == ("0", "0", "0")
    assert second["chunks written"] == "0"
    assert target.rows() == target.ingested  # same rows, same ingest times: nothing rewritten


def test_search_finds_the_approval_table(target: Target) -> None:
    run = target.runs["search"]

    assert run.returncode == 0, run.stdout + run.stderr
    if target.kind == "standalone":  # the default hybrid search falls back to dense on 2.3
        assert "hybrid search is unavailable" in run.stderr and "using dense" in run.stderr
    else:
        assert run.stderr.strip() == ""
    assert "Top 4 for:" in run.stdout
    assert EXPENSES[0] in run.stdout


def test_ask_json_answers_from_the_documents(target: Target) -> None:
    data = json_out(target.runs["ask"])

    assert data["question"] == QUESTION
    assert data["answered"] is True
    assert data["answer"].startswith("According to the documents, ")
    assert data["cited"] == [1]
    sources = data["sources"]
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    pages = {(s["source"], s["page"]): s["text"] for s in sources}
    assert EXPENSES in pages, sorted(pages)
    assert "EUR 750" in pages[EXPENSES]
    (chat,) = target.chat_requests  # no other command talks to the chat model
    assert chat["model"] == "fake" and chat["stream"] is True


def test_hybrid_search_falls_back_to_dense_where_bm25_is_missing(target: Target) -> None:
    """BM25 functions need Milvus 2.5: the 2.3 standalone must say so and still answer."""
    run = target.runs["hybrid"]

    assert run.returncode == 0, run.stdout + run.stderr
    assert EXPENSES[0] in run.stdout
    if target.kind == "standalone":
        assert "hybrid search is unavailable" in run.stderr, run.stderr
        assert "BM25" in run.stderr and "using dense search" in run.stderr
    else:
        assert "search is unavailable" not in run.stderr, run.stderr


def test_sources_lists_each_file_with_its_record(target: Target) -> None:
    stored = json_out(target.runs["sources"])

    assert [f["source"] for f in stored] == sorted(sample_sources())
    for info in stored:
        path = SAMPLE_DOCS / info["source"]
        assert info["complete"] is True and info["chunks"] == info["expected_chunks"] > 0
        assert info["file_size"] == path.stat().st_size
        assert info["file_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info["ingested_at"]
    assert sum(f["chunks"] for f in stored) == len(target.ingested)


def test_collections_lists_model_dimension_and_rows(target: Target) -> None:
    listed = {c["name"]: c for c in json_out(target.runs["collections"])}

    mine = listed[COLLECTION]
    assert mine["rows"] == len(target.ingested)
    assert (mine["embedding_model"], mine["dimension"]) == ("text-embedding-3-small", 384)
    assert mine["bm25"] is (target.kind != "standalone")  # decided when it was created


def test_remove_dry_run_then_remove(target: Target) -> None:
    stored = json_out(target.runs["sources"])
    doomed = sum(f["chunks"] for f in stored if f["source"].startswith("products/"))
    before = target.rows()

    dry = target.rag("remove", "products/*", "--dry-run")

    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"would remove {doomed} rows from 4 files" in dry.stdout
    assert target.rows() == before

    done = target.rag("remove", "products/*")

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed {doomed} rows from 4 files" in done.stdout
    after = target.rows()
    assert len(after) == len(before) - doomed
    assert set(after) < set(before)


def test_drop_deletes_the_collection(target: Target) -> None:
    rows = len(target.rows())

    run = target.rag("drop", COLLECTION, "--yes")

    assert run.returncode == 0, run.stdout + run.stderr
    assert f"dropped '{COLLECTION}' ({rows} rows)" in run.stdout
    client = MilvusClient(uri=target.uri, timeout=30)
    try:
        assert not client.has_collection(COLLECTION)
    finally:
        client.close()


def test_token_is_not_printed_when_the_server_is_unreachable(
    tmp_path: Path, openai_server: FakeServer
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens
    variables = rag_variables(closed, openai_server) | {"RAG_MILVUS_TIMEOUT": "2"}
    docs = write_files(tmp_path / "docs", {"a.md": "# A\n\nSome text.\n"})

    with ThreadPoolExecutor(2) as pool:
        ingest = pool.submit(run_rag, "-v", "ingest", str(docs), cwd=tmp_path, **variables)
        doctor = pool.submit(run_rag, "doctor", cwd=tmp_path, **variables)
    ingest_run, doctor_run = ingest.result(), doctor.result()

    assert ingest_run.returncode != 0
    assert f"error: cannot use Milvus at {closed}" in ingest_run.stderr, ingest_run.stderr
    assert doctor_run.returncode == 1
    assert re.search(r"RAG_MILVUS_TOKEN\s*│\s*\*{8}\s*│", doctor_run.stdout), doctor_run.stdout
    assert f"FAIL  milvus: cannot use Milvus at {closed}" in doctor_run.stdout
    assert_no_canary(ingest_run, doctor_run)


def test_password_in_the_uri_is_not_printed(tmp_path: Path, openai_server: FakeServer) -> None:
    uri = f"http://root:{CANARY}@127.0.0.1:{free_port()}"
    variables = rag_variables(uri, openai_server) | {"RAG_MILVUS_TIMEOUT": "2"}

    doctor = run_rag("doctor", cwd=tmp_path, **variables)  # the settings and the error line

    assert doctor.returncode == 1
    assert_no_canary(doctor)
