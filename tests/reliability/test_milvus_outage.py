"""The Milvus server dies under a running `rag ingest` (SIGKILL of `milvus-lite server`).

The ingest must retry with back-off (announced, one line per wait), then stop with one
error line and a non-zero exit code; once the server is back on the same data folder and
port, a re-run must leave exactly the rows of one clean ingest: same primary keys, same
content hashes, no duplicates. If the server comes back while the ingest is still
retrying, the same run finishes by itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_files
from tests.reliability.conftest import RestartableMilvus, ingest_variables, read_rows, start_rag
from tests.support.cli_inprocess import invoke_rag
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, FakeServer, serve

pytestmark = [pytest.mark.server, pytest.mark.slow]

FILES = 16
SETTINGS = {"chunk_size": 200, "chunk_overlap": 20, "batch_size": 6, "concurrency": 2}


def document(number: int) -> str:
    lines = [f"# Hangar {number}"]
    lines += [
        f"Drone {number}-{i} was serviced in hangar {number} on day {i}; rotor wear {i * 3} %."
        for i in range(24)
    ]
    return "\n\n".join(lines) + "\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_files(tmp_path / "docs", {f"h{n:02d}.md": document(n) for n in range(FILES)})


@pytest.fixture
def slow_embeddings() -> Iterator[FakeServer]:
    """Slow enough that the server can be killed while most batches are still to come."""
    with serve(FakeOpenAI(FakeOpenAIConfig(embed_latency=0.15))) as server:
        yield server


def variables(milvus: RestartableMilvus, server: FakeServer, collection: str) -> dict[str, str]:
    return ingest_variables(milvus, server, collection, SETTINGS)


def answered(server: FakeServer) -> int:
    return sum(
        1 for r in list(server.fake.requests) if r.kind == "embeddings" and r.outcome == "ok"
    )


def wait_for_answers(server: FakeServer, count: int, process: object, log: Path) -> None:
    deadline = time.monotonic() + 90
    while answered(server) < count:
        assert process.poll() is None, f"ingest ended early:\n{log.read_text()}"  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.005)


def ingest_to_end(folder: Path, cwd: Path, log: Path, **env: str) -> str:
    process = start_rag("ingest", str(folder), cwd=cwd, log=log, **env)
    assert process.wait(timeout=180) == 0, log.read_text()
    return log.read_text()


def pk_set(milvus: RestartableMilvus, collection: str) -> set[tuple[str, str]]:
    client = milvus.client()
    try:
        rows = read_rows(client, collection)
    finally:
        client.close()
    pairs = {(r["pk"], r["content_hash"]) for r in rows}
    assert len(pairs) == len(rows), f"{collection}: duplicate rows"
    return pairs


def test_server_killed_mid_ingest_fails_in_one_line_then_rerun_equals_clean_ingest(
    folder: Path, slow_embeddings: FakeServer, restartable_milvus: RestartableMilvus, tmp_path: Path
) -> None:
    milvus = restartable_milvus
    env = variables(milvus, slow_embeddings, "docs")
    log = tmp_path / "killed.log"
    process = start_rag("ingest", str(folder), cwd=tmp_path, log=log, **env)
    wait_for_answers(slow_embeddings, 6, process, log)
    milvus.kill()
    killed_at = time.monotonic()
    code = process.wait(timeout=120)
    took = time.monotonic() - killed_at
    output = log.read_text()

    assert code == 3, output  # StoreUnavailable
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"error: cannot use Milvus at {milvus.uri}: "), errors
    assert "AioRpcError" not in errors[0] and "Traceback" not in output, output
    assert output.rstrip().splitlines()[-1] == errors[0], "the error must be the last word"
    # back-off: each writer announced its waits, and they grew (0.5, 1, 2, 4 s + jitter)
    waits = [float(w) for w in re.findall(r"trying again in ([\d.]+) s \(attempt", output)]
    attempts = [int(a) for a in re.findall(r"\(attempt (\d) of 5\)", output)]
    assert max(attempts) == 5 and len(waits) >= 4, output
    assert max(waits) >= 4.0 and min(waits) < 1.5, waits
    assert took >= 0.5 + 1 + 2 + 4, f"gave up after {took:.1f} s: no real back-off"

    milvus.start()  # same data folder, same port
    slow_embeddings.fake.config.embed_latency = 0.0
    rerun = ingest_to_end(folder, tmp_path, tmp_path / "rerun.log", **env)
    assert "Ingest summary" in rerun and not re.search(r"^error", rerun, re.M), rerun
    # The reference: the same command in this process (no process start needed for it).
    clean = invoke_rag(
        "ingest", str(folder), cwd=tmp_path, **variables(milvus, slow_embeddings, "clean")
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr

    clean = pk_set(milvus, "clean")
    assert len(clean) > 4 * FILES
    assert pk_set(milvus, "docs") == clean


@pytest.mark.heavy
def test_server_back_within_the_retries_lets_the_same_run_finish(
    folder: Path, slow_embeddings: FakeServer, restartable_milvus: RestartableMilvus, tmp_path: Path
) -> None:
    milvus = restartable_milvus
    env = variables(milvus, slow_embeddings, "docs")
    log = tmp_path / "blip.log"
    process = start_rag("ingest", str(folder), cwd=tmp_path, log=log, **env)
    wait_for_answers(slow_embeddings, 6, process, log)
    milvus.kill()
    time.sleep(1.0)
    milvus.start()  # back after ~2 s; the retries span ~8 s
    assert process.wait(timeout=180) == 0, log.read_text()
    output = log.read_text()
    assert "trying again in" in output, "the outage went unnoticed: was the server killed?"
    assert not re.search(r"^error", output, re.M), output
    assert "Ingest summary" in output, output

    slow_embeddings.fake.config.embed_latency = 0.0
    ingest_to_end(
        folder, tmp_path, tmp_path / "clean.log", **variables(milvus, slow_embeddings, "clean")
    )
    assert pk_set(milvus, "docs") == pk_set(milvus, "clean")
