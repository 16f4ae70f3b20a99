"""`rag ingest` killed with SIGKILL at random moments, on a Milvus *server*, then re-run.

``tests/ingest/test_ingest_interrupt.py`` kills a first ingest into Milvus Lite after a counted
number of embedding answers. This module adds what it does not cover: kills at random
wall-clock moments (during start-up, discovery, writes or the final removals), a re-run
killed again, and a kill in the middle of an *update*, where every file must stay
searchable (old or new version, complete) while the run is dead. Each case ends with a
run to completion whose rows must equal those of one clean ingest of the same folder.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_files
from tests.reliability.conftest import (
    RestartableMilvus,
    ingest_variables,
    kill_group,
    read_rows,
    start_rag,
)
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, FakeServer, serve

pytestmark = [pytest.mark.heavy, pytest.mark.server]

FILES = 14
SETTINGS = {"chunk_size": 200, "chunk_overlap": 20, "batch_size": 5, "concurrency": 2}


def document(number: int, version: int = 1) -> str:
    lines = [f"# Site {number} (revision {version})"]
    lines += [
        f"Crane {number}-{i} at site {number} lifted {i * 3 + version} tonnes, revision {version}."
        for i in range(18 + version * 3)
    ]
    return "\n\n".join(lines) + "\n"


@pytest.fixture
def embeddings() -> Iterator[FakeServer]:
    # ~20 batches over 2 writers at ~0.3 s each: a run takes ~3 s after a ~3 s start-up
    with serve(FakeOpenAI(FakeOpenAIConfig(embed_latency=0.3, embed_jitter=0.1))) as server:
        yield server


def variables(milvus: RestartableMilvus, server: FakeServer, collection: str) -> dict[str, str]:
    return ingest_variables(milvus, server, collection, SETTINGS)


def complete_run(folder: Path, log: Path, env: dict[str, str]) -> None:
    process = start_rag("ingest", str(folder), cwd=log.parent, log=log, **env)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]


def killed_run(folder: Path, log: Path, env: dict[str, str], after: float) -> bool:
    """Start an ingest and SIGKILL it ``after`` seconds in; False if it finished first."""
    process = start_rag("ingest", str(folder), cwd=log.parent, log=log, **env)
    deadline = time.monotonic() + after
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    finished = process.poll() is not None
    kill_group(process)
    return not finished


def rows_of(milvus: RestartableMilvus, collection: str) -> list[dict[str, object]]:
    client = milvus.client()
    try:
        return read_rows(
            client, collection, ["pk", "content_hash", "source", "file_hash", "chunk_count"]
        )
    finally:
        client.close()


def pairs(rows: list[dict[str, object]]) -> set[tuple[object, object]]:
    found = {(r["pk"], r["content_hash"]) for r in rows}
    assert len(found) == len(rows), "duplicate rows"
    return found


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [3, 17, 29, 41, 58])
def test_random_kills_then_a_rerun_equal_a_clean_ingest(
    seed: int, embeddings: FakeServer, restartable_milvus: RestartableMilvus, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    folder = write_files(tmp_path / "docs", {f"s{n:02d}.md": document(n) for n in range(FILES)})
    env = variables(restartable_milvus, embeddings, "docs")
    # One or two kills at random moments: the first anywhere from start-up to mid-run, a
    # second (on some seeds) into the re-run itself.
    attempts = rng.choice([1, 2])
    kills = sum(
        killed_run(folder, tmp_path / f"kill{attempt}.log", env, rng.uniform(0.5, 5.0))
        for attempt in range(attempts)
    )
    assert kills == attempts, "a run finished before its kill: slow the embeddings down"
    embeddings.fake.config.embed_latency = 0.0
    complete_run(folder, tmp_path / "rerun.log", env)
    complete_run(folder, tmp_path / "clean.log", variables(restartable_milvus, embeddings, "clean"))
    clean = pairs(rows_of(restartable_milvus, "clean"))
    assert len(clean) > 5 * FILES
    assert pairs(rows_of(restartable_milvus, "docs")) == clean, f"{kills} kills"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [5, 19, 33])
def test_a_kill_mid_update_keeps_every_file_searchable_then_converges(
    seed: int, embeddings: FakeServer, restartable_milvus: RestartableMilvus, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    folder = write_files(tmp_path / "docs", {f"s{n:02d}.md": document(n) for n in range(FILES)})
    env = variables(restartable_milvus, embeddings, "docs")
    embeddings.fake.config.embed_latency = 0.0
    complete_run(folder, tmp_path / "first.log", env)
    embeddings.fake.config.embed_latency = 0.3
    for n in range(0, FILES, 2):  # half the files get a longer second revision
        (folder / f"s{n:02d}.md").write_text(document(n, version=2))
    embeddings.fake.reset()
    log = tmp_path / "update.log"
    process = start_rag("ingest", str(folder), cwd=tmp_path, log=log, **env)
    wanted = rng.randint(2, 12)  # embedding answers before the kill: the update is under way
    deadline = time.monotonic() + 120
    while sum(1 for r in list(embeddings.fake.requests) if r.outcome == "ok") < wanted:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    kill_group(process)
    embeddings.fake.config.embed_latency = 0.0

    # While dead: every file still has exactly one complete version stored (maybe plus
    # part of the new one, which the re-run finishes or replaces).
    rows = rows_of(restartable_milvus, "docs")
    by_version = Counter((r["source"], r["file_hash"]) for r in rows)
    counts = {(r["source"], r["file_hash"]): r["chunk_count"] for r in rows}
    complete = {source for (source, digest), n in by_version.items() if n == counts[source, digest]}
    assert complete == {f"s{n:02d}.md" for n in range(FILES)}, "a file lost its only version"

    complete_run(folder, tmp_path / "rerun.log", env)
    complete_run(folder, tmp_path / "clean.log", variables(restartable_milvus, embeddings, "clean"))
    assert pairs(rows_of(restartable_milvus, "docs")) == pairs(rows_of(restartable_milvus, "clean"))
