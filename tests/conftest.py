"""Shared fixtures for the ingestion tests: real Milvus Lite, the real local model, no mocks.

Speed matters on a 2-core machine, so:
- the sample corpus is ingested once per session (``corpus``) into a session Milvus Lite
  database; read-only tests query it. Its store is bound to the session event loop, so
  async tests using it are marked ``asyncio(loop_scope="session")``;
- mutating tests get a fresh collection in that same database (``open_env``) and ingest
  tiny generated folders; the local model is loaded once (``local_embeddings``) and handed
  to ``rag.services.open_services`` in place of a new copy;
- a test that runs the ``rag`` console script uses its own database file, because Milvus
  Lite locks a database to one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from langchain_core.embeddings import Embeddings
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient

import rag.services
from bench.services import wait_for_milvus
from ingest.pipeline import FileOutcome, IngestReport, ingest_path
from rag.config import Settings, load_settings
from rag.embeddings import LocalMiniLMEmbeddings, embedding_identity
from rag.local.server import free_port
from rag.services import Services, close_store, open_services
from rag.store.lite import tolerate_lite_keepalive
from rag.store.milvus import RagMilvus, open_store
from tests.support.fake_openai import FakeServer, serve
from tests.support.postgres import postgres_cluster, unavailable_reason

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DOCS = REPO_ROOT / "sample_docs"
QUESTIONS_FILE = REPO_ROOT / "tests" / "data" / "sample_questions.jsonl"
BIN_DIR = Path(sys.executable).parent
RAG_BIN = BIN_DIR / "rag"
MILVUS_LITE_BIN = BIN_DIR / "milvus-lite"
SAMPLE_FILE_COUNT = 17
ROW_FIELDS = [
    "pk",
    "text",
    "source",
    "title",
    "section",
    "page",
    "chunk_index",
    "chunk_count",
    "content_hash",
    "file_hash",
    "ingested_at",
]
# Every setting the ingestion reads, pinned so a developer's RAG_* variables or .env file
# cannot change what a test does.
PINNED_SETTINGS: dict[str, object] = {
    "embedding_provider": "local",
    "embedding_model": None,
    "embedding_base_url": None,
    "embedding_api_key": None,
    "embedding_dimensions": None,
    "embedding_batch_size": 32,
    "embedding_threads": 0,
    "milvus_token": None,
    "milvus_db": None,
    "milvus_timeout": 30.0,
    "chunk_size": 1000,
    "chunk_overlap": 150,
    "batch_size": 64,
    "concurrency": 4,
    "max_file_mb": 200.0,
}


def make_settings(milvus_uri: str, collection: str, **overrides: object) -> Settings:
    """Settings for a test: pinned ingestion values, no .env file, then ``overrides``."""
    values = {**PINNED_SETTINGS, **overrides}
    return load_settings(_env_file=None, milvus_uri=milvus_uri, collection=collection, **values)


def open_local_store(settings: Settings, embeddings: Embeddings, **options: Any) -> RagMilvus:
    """Blocking: the store on ``settings``' collection, built by the local embedding model."""
    model, dimension = embedding_identity(settings)
    assert dimension is not None
    return open_store(settings, embeddings, dimension, embedding_model=model, **options)


@contextlib.asynccontextmanager
async def store_in_this_loop(
    settings: Settings, embeddings: Embeddings
) -> AsyncIterator[RagMilvus]:
    """The store opened in the running event loop (its async client is bound to it), closed
    after: tests in their own loops each open their own."""
    store = await asyncio.to_thread(open_local_store, settings, embeddings)
    try:
        yield store
    finally:
        await close_store(store)


@pytest_asyncio.fixture(loop_scope="function")
async def store(
    collection: Settings, local_embeddings: LocalMiniLMEmbeddings
) -> AsyncIterator[RagMilvus]:
    """The module's ``collection`` fixture opened in this test's event loop, closed after."""
    async with store_in_this_loop(collection, local_embeddings) as opened:
        yield opened


@contextlib.asynccontextmanager
async def filled_collection(
    session_db: str,
    name: str,
    embeddings: Embeddings,
    fill: Callable[[RagMilvus, Settings], Awaitable[object]],
) -> AsyncIterator[Settings]:
    """A collection of the session database written once by ``fill``; dropped after."""
    settings = make_settings(session_db, name)
    store = await asyncio.to_thread(open_local_store, settings, embeddings, recreate=True)
    try:
        await fill(store, settings)
    finally:
        await close_store(store)
    yield settings
    client = MilvusClient(uri=session_db)
    try:
        client.drop_collection(name)
    finally:
        client.close()


def load_questions() -> list[dict[str, Any]]:
    lines = QUESTIONS_FILE.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def sample_sources() -> set[str]:
    """Relative paths (forward slashes) of every file in the sample corpus."""
    return {p.relative_to(SAMPLE_DOCS).as_posix() for p in SAMPLE_DOCS.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session (skipped where none can run).

    initdb and a server start cost seconds, so modules share one cluster: a test that
    needs a clean schema creates a database of its own name on it (CREATE DATABASE).
    """
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as url:
        yield url


def fake_embeddings_env(base_url: str) -> dict[str, str]:
    """RAG_* variables that point the app's embeddings at a loopback fake endpoint."""
    return {
        "RAG_EMBEDDING_PROVIDER": "openai",
        "RAG_EMBEDDING_BASE_URL": base_url,
        "RAG_EMBEDDING_DIMENSIONS": "384",
    }


def fake_models_env(base_url: str) -> dict[str, str]:
    """Embeddings and the chat model both from one loopback fake endpoint."""
    return {**fake_embeddings_env(base_url), "RAG_LLM_BASE_URL": base_url, "RAG_LLM_MODEL": "fake"}


def copy_samples(folder: Path, names: Iterable[str]) -> Path:
    """A fresh ``folder`` holding copies of these sample documents; returns ``folder``."""
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy2(SAMPLE_DOCS / name, folder / name)
    return folder


def write_files(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Create ``files`` (relative path -> text or bytes) under ``root``; returns ``root``."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    root.mkdir(parents=True, exist_ok=True)
    return root


def by_source(report: IngestReport) -> dict[str, FileOutcome]:
    outcomes = {o.source: o for o in report.outcomes}
    assert len(outcomes) == len(report.outcomes), f"a source reported twice: {report.outcomes}"
    return outcomes


# --------------------------------------------------------------------------------------------
# Recording progress
# --------------------------------------------------------------------------------------------


@dataclass
class RecordingReporter:
    """A pipeline Reporter that keeps every event, for assertions."""

    found: list[int] = field(default_factory=list)
    done: list[FileOutcome] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def files_found(self, total: int) -> None:
        self.found.append(total)

    def file_done(self, outcome: FileOutcome) -> None:
        self.done.append(outcome)

    def chunks_written(self, count: int) -> None:
        self.written.append(count)

    def note(self, source: str, message: str) -> None:
        self.notes.append((source, message))


# --------------------------------------------------------------------------------------------
# One collection to ingest into
# --------------------------------------------------------------------------------------------


@dataclass
class IngestEnv:
    """A collection with its settings and services, plus helpers to ingest and inspect it."""

    settings: Settings
    services: Services

    @property
    def store(self) -> Any:
        return self.services.store

    async def ingest(
        self, root: Path, reporter: RecordingReporter | None = None, **options: object
    ) -> IngestReport:
        return await ingest_path(root, self.store, self.settings, reporter, **options)

    async def count(self, expr: str = "") -> int:
        rows = await self.store.aclient.query(
            self.store.collection_name, filter=expr, output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"]) if rows else 0

    async def rows(
        self, expr: str = 'pk != ""', fields: list[str] | None = None
    ) -> list[dict[str, Any]]:
        total = await self.count()
        assert total <= 16_384, "too many rows to read in one query"
        rows = await self.store.aclient.query(
            self.store.collection_name,
            filter=expr,
            output_fields=fields or ROW_FIELDS,
            limit=16_384,
        )
        return [dict(r) for r in rows]


OpenEnv = Callable[..., Awaitable[IngestEnv]]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RAG_* variable and no .env file reach the code under test (cwd is a temp dir)."""
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture(scope="session")
def local_embeddings() -> LocalMiniLMEmbeddings:
    """The local ONNX model, loaded and checksum-verified once for the session."""
    embeddings = LocalMiniLMEmbeddings()
    embeddings.load()
    return embeddings


@pytest.fixture(scope="session")
def session_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Milvus Lite database for the session (one in-process Lite server)."""
    path = tmp_path_factory.mktemp("milvus") / "session.db"
    yield str(path)
    server_manager_instance.release_server(str(path))


@pytest.fixture
def open_env(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    session_db: str,
    local_embeddings: LocalMiniLMEmbeddings,
) -> Iterator[OpenEnv]:
    """Factory: ``await open_env(**settings)`` -> an IngestEnv on a new collection.

    ``open_services`` runs for real; only the local model is the session's loaded copy
    instead of a fresh load. Collections live in the session database unless
    ``milvus_uri`` is given, and are dropped afterwards.
    """
    real_build = rag.services.build_embeddings

    def build(settings: Settings) -> Any:
        if settings.embedding_provider == "local":
            return local_embeddings
        return real_build(settings)

    monkeypatch.setattr(rag.services, "build_embeddings", build)
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:80]
    created: list[tuple[str, str]] = []

    async def factory(
        *, collection: str | None = None, recreate: bool = False, **overrides: object
    ) -> IngestEnv:
        name = collection or f"t_{base}_{len(created)}"
        uri = str(overrides.pop("milvus_uri", session_db))
        settings = make_settings(uri, name, **overrides)
        services = await open_services(settings, recreate=recreate)
        created.append((uri, name))
        return IngestEnv(settings, services)

    yield factory
    for uri, name in created:
        if uri != session_db:
            continue
        client = MilvusClient(uri=uri)
        try:
            if client.has_collection(name):
                client.drop_collection(name)
        finally:
            client.close()


# --------------------------------------------------------------------------------------------
# The sample corpus, ingested once
# --------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    env: IngestEnv
    report: IngestReport
    reporter: RecordingReporter


@pytest.fixture(scope="session")
async def corpus(session_db: str) -> AsyncIterator[Corpus]:
    """sample_docs/ ingested with the default settings through the real open_services.

    Bound to the session event loop: tests using it need asyncio(loop_scope="session").
    """
    settings = make_settings(session_db, "corpus")
    services = await open_services(settings, recreate=True)
    env = IngestEnv(settings, services)
    reporter = RecordingReporter()
    report = await env.ingest(SAMPLE_DOCS, reporter)
    yield Corpus(env, report, reporter)


# --------------------------------------------------------------------------------------------
# External processes: the fake OpenAI server, a Milvus server, the rag console script
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_openai() -> Iterator[FakeServer]:
    """A loopback OpenAI-compatible endpoint (fast deterministic embeddings)."""
    with serve() as server:
        yield server


# Tests open Milvus Lite files with their own clients too (see rag/store/lite.py).
tolerate_lite_keepalive()

# One readiness check for tests and benchmarks (bench/services.py owns it).
_wait_for_milvus = wait_for_milvus


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus server process on loopback (``milvus-lite server``); yields its http URI."""
    data_dir = tmp_path_factory.mktemp("milvus-server")
    port = free_port()
    log = (data_dir.parent / f"{data_dir.name}.log").open("wb")
    process = subprocess.Popen(
        [
            str(MILVUS_LITE_BIN),
            "server",
            "--data-dir",
            str(data_dir / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_for_milvus(uri, process, timeout=60)
        yield uri
    finally:
        stop_process_group(process)
        log.close()


def stop_process_group(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """Stop a process started with start_new_session=True, and everything it started."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers in the group, if any
    if process.poll() is None:
        process.wait(timeout=grace)


def cli_env(**variables: str) -> dict[str, str]:
    """Environment for the rag console script: no inherited RAG_*, a wide console."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    env.update(variables)
    return env


def run_rag(
    *args: str, cwd: Path, timeout: float = 120, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run ``rag ARGS`` to completion with ``RAG_*`` variables given as keywords."""
    return subprocess.run(
        [str(RAG_BIN), *args],
        cwd=cwd,
        env=cli_env(**variables),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
