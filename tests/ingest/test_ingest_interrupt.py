"""A `rag ingest` killed with SIGKILL mid-run, then re-run, equals a clean ingest exactly.

The console script runs as a subprocess on its own Milvus Lite database, embedding through
the loopback fake OpenAI server (slowed down, so the kill lands mid-run). The kill point is
chosen by counting embedding requests the server has answered, offset by a seeded number.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient

from ingest.pipeline import ingest_path
from rag.services import open_services
from tests.conftest import (
    RAG_BIN,
    cli_env,
    fake_embeddings_env,
    make_settings,
    write_files,
)
from tests.support.cli_inprocess import invoke_rag
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, FakeServer, serve

FILES = 20
SETTINGS = {
    "chunk_size": 200,
    "chunk_overlap": 20,
    "batch_size": 4,
    "concurrency": 2,
    "embedding_batch_size": 4,
}
COLLECTION = "docs"


def document(number: int) -> str:
    lines = [f"# Topic {number}"]
    for i in range(10):  # about 6 chunks: two batches per file
        lines.append(
            f"Entry {i} of topic {number}: unit {number * 10 + i} passed inspection "
            f"after its {i + 2}-hour check at bay {number % 4}."
        )
    return "\n\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interrupt") / "docs"
    return write_files(root, {f"topic_{n:02d}.md": document(n) for n in range(FILES)})


@pytest.fixture(scope="module")
def slow_openai() -> Iterator[FakeServer]:
    with serve(FakeOpenAI(FakeOpenAIConfig(embed_latency=0.08))) as server:
        yield server


def read_rows(db: str) -> list[dict[str, Any]]:
    """Every row of the collection, read in this process, then the database is let go."""
    client = MilvusClient(uri=db)
    try:
        if not client.has_collection(COLLECTION):
            return []
        client.load_collection(COLLECTION)  # a reopened Lite database starts released
        return [
            dict(row)
            for row in client.query(
                COLLECTION,
                filter='pk != ""',
                output_fields=["pk", "content_hash", "source", "chunk_index", "chunk_count"],
                limit=16_384,
            )
        ]
    finally:
        client.close()
        server_manager_instance.release_server(db)  # the subprocess needs the lock back


def count_rows(db: str) -> int:
    client = MilvusClient(uri=db)
    try:
        if not client.has_collection(COLLECTION):
            return 0
        client.load_collection(COLLECTION)
        result = client.query(COLLECTION, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])
    finally:
        client.close()
        server_manager_instance.release_server(db)


@pytest.fixture(scope="module")
async def clean_rows(
    folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> set[tuple[str, str]]:
    """(pk, content_hash) of a clean, uninterrupted ingest of the folder (fresh collection)."""
    db = str(tmp_path_factory.mktemp("clean") / "clean.db")
    with serve() as fast:
        settings = make_settings(
            db,
            COLLECTION,
            embedding_provider="openai",
            embedding_base_url=fast.base_url,
            embedding_dimensions=384,
            **SETTINGS,
        )
        services = await open_services(settings)
        report = await ingest_path(folder, services.store, settings)
        services.store.client.close()
    assert report.ok and report.count("added") == FILES
    rows = read_rows(db)
    assert len(rows) == report.chunks_written
    return {(r["pk"], r["content_hash"]) for r in rows}


def answered(server: FakeServer) -> int:
    return sum(
        1 for r in list(server.fake.requests) if r.kind == "embeddings" and r.outcome == "ok"
    )


def ingest_variables(db: str, server: FakeServer) -> dict[str, str]:
    return {
        "RAG_MILVUS_URI": db,
        "RAG_COLLECTION": COLLECTION,
        **fake_embeddings_env(server.base_url),
        **{f"RAG_{k.upper()}": str(v) for k, v in SETTINGS.items()},
    }


def rag_ingest(folder: Path, db: str, server: FakeServer, log: Path) -> subprocess.Popen[bytes]:
    variables = ingest_variables(db, server)
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(RAG_BIN), "ingest", str(folder)],
            cwd=log.parent,
            env=cli_env(**variables),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the kill takes everything
        )


def batches_for(chunks: int) -> int:
    return -(-chunks // int(SETTINGS["batch_size"]))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [11, 23, 37])
def test_killed_ingest_resumes_to_exactly_a_clean_ingest(
    seed: int,
    folder: Path,
    slow_openai: FakeServer,
    clean_rows: set[tuple[str, str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = str(tmp_path / "m.db")
    total = len(clean_rows)
    rng = random.Random(seed)
    # Kill once this many embedding calls were answered: with 2 writers, 3 answers mean
    # at least one batch was written; the folder needs ~40, so the run is far from done.
    kill_after = rng.randint(3, 20)
    slow_openai.fake.reset()

    first_log = tmp_path / "first.log"
    process = rag_ingest(folder, db, slow_openai, first_log)
    try:
        deadline = time.monotonic() + 90
        while answered(slow_openai) < kill_after:
            assert process.poll() is None, f"ingest ended before the kill:\n{first_log.read_text()}"
            assert time.monotonic() < deadline, "ingest made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))
    finally:
        kill_group(process)
    assert process.returncode == -signal.SIGKILL

    with caplog.at_level(logging.WARNING, logger="milvus_lite"):
        partial = count_rows(db)
    # Milvus Lite drops a whole WAL file when the kill tore its last write, losing rows it
    # had acknowledged; the re-run must then redo everything, which it can.
    torn_wal = any("WAL recovery stopped" in r.getMessage() for r in caplog.records)
    assert partial < total, f"the kill after {kill_after} answers came too late"
    assert partial > 0 or torn_wal, f"kill after {kill_after} answers left no rows"

    # The re-run is the same command in this process: the crash needed a process to kill,
    # resuming from what it left does not (and spares a process start per seed).
    slow_openai.fake.reset()
    rerun = invoke_rag("ingest", str(folder), cwd=tmp_path, **ingest_variables(db, slow_openai))
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output
    assert "Ingest summary" in output

    rows = read_rows(db)
    pairs = {(r["pk"], r["content_hash"]) for r in rows}
    assert len(rows) == len({r["pk"] for r in rows}), "duplicate primary keys"
    assert len(rows) == count_rows(db) == total
    assert pairs == clean_rows

    # The re-run kept every file finished before the kill and embedded only the others.
    done = re.findall(r"^(added|unchanged|updated): (\S+) \((\d+) chunks\)$", output, re.M)
    assert len(done) == FILES, output
    assert {status for status, _, _ in done} <= {"added", "unchanged"}
    # Batches may merge chunks of several files, so the request count lies between a
    # fully packed batching of the redone chunks and one batching per file.
    added = [int(chunks) for status, _, chunks in done if status == "added"]
    assert batches_for(sum(added)) <= answered(slow_openai) <= sum(map(batches_for, added))


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole group at once: no cleanup, exactly like a crash or an OOM kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
