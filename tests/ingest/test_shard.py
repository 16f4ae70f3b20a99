"""`rag ingest FOLDER --shard K/N`: N worker processes on one Milvus server end where one run does.

The partition and the value parsing are checked directly; the rest runs real `rag ingest`
processes side by side against a ``milvus-lite server`` on loopback (and the Milvus 2.3
standalone for the plain convergence case), with the fake OpenAI server for embeddings,
and compares every row (primary key, chunk content hash, file hash) with one
single-process run of the same folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from ingest.plan import Planner, Scope
from ingest.shard import Shard, parse_shard, resolve_shard, shard_of
from rag.errors import ConfigError
from tests.conftest import RAG_BIN, cli_env, run_rag, stop_process_group, write_files
from tests.support.cli_inprocess import invoke_rag
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, FakeServer, serve
from tests.support.milvus_standalone import milvus_standalone  # noqa: F401 - a fixture

Rows = dict[str, tuple[str, str, str]]  # pk -> (source, file_hash, content_hash)
WORKERS = 3
# Small chunks and batches: files of several chunks whose batches span files, so a killed
# worker leaves files half written.
CHUNKING = {"RAG_CHUNK_SIZE": "200", "RAG_CHUNK_OVERLAP": "20", "RAG_BATCH_SIZE": "4"}


# --- the partition ---------------------------------------------------------------------------

NAMES = [f"docs/section {i // 50}/file-{i:04d}.md" for i in range(3000)]


def test_every_source_is_in_exactly_one_shard() -> None:
    for count in range(1, 7):
        for name in NAMES[:500]:
            owners = [k for k in range(count) if Shard(k, count).owns(name)]
            assert owners == [shard_of(name, count)], (name, count)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_the_partition_is_balanced(count: int) -> None:
    sizes = [sum(Shard(k, count).owns(n) for n in NAMES) for k in range(count)]
    mean = len(NAMES) / count
    assert sum(sizes) == len(NAMES)
    assert all(abs(size - mean) < 0.1 * mean for size in sizes), sizes


def test_the_partition_is_the_same_in_every_process() -> None:
    """Python's hash() of a str changes with PYTHONHASHSEED; the partition must not."""
    here = [shard_of(n, 5) for n in NAMES[:200]]
    code = (
        "import json, sys; from ingest.shard import shard_of; "
        "names = json.load(sys.stdin); print(json.dumps([shard_of(n, 5) for n in names]))"
    )
    for seed in ("1", "2", "random"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(NAMES[:200]),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=Path(__file__).resolve().parents[2],
        )
        assert json.loads(out.stdout) == here, seed
    # Pinned: a changed partition would reshuffle files between the workers of a running Job.
    names = ("a.md", "sub/b.txt", "ü/ß.pdf", "x/y/z.docx")
    assert [shard_of(n, 3) for n in names] == [2, 0, 0, 1]


def test_missing_sources_are_removed_only_by_their_own_shard() -> None:
    known = {f"f{i}.md" for i in range(60)}
    present = {f"f{i}.md" for i in range(0, 60, 2)}  # the odd ones are gone
    planner = Planner(None, None, known)  # type: ignore[arg-type]  # missing() reads no store
    removed = [planner.missing(present, Scope(shard=Shard(k, WORKERS))) for k in range(WORKERS)]
    assert sorted(s for part in removed for s in part) == sorted(known - present)
    for k, part in enumerate(removed):
        assert part and all(shard_of(s, WORKERS) == k for s in part)
    assert planner.missing(present, Scope()) == sorted(known - present)  # no shard: as before


# --- the values ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "shard"), [("1/3", Shard(0, 3)), (" 3 / 3 ", Shard(2, 3)),
                                             ("1/1", Shard(0, 1))])  # fmt: skip
def test_shard_values(text: str, shard: Shard) -> None:
    assert parse_shard(text) == shard
    assert str(shard) == text.replace(" ", "")


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "3", "1/0", "-1/3", "1/3/5", ""])
def test_malformed_shard_values_name_their_source(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^RAG_INGEST_SHARD: ") as caught:
        parse_shard(text, "RAG_INGEST_SHARD")
    assert "\n" not in str(caught.value)


def test_the_shard_is_taken_from_the_option_then_the_variable_then_the_job_index() -> None:
    job = {"JOB_COMPLETION_INDEX": "2"}
    assert resolve_shard(None, None, None, None, {}) is None
    assert resolve_shard("1/4", None, "2/4", None, job) == Shard(0, 4)
    assert resolve_shard(None, None, "2/4", None, job) == Shard(1, 4)
    assert resolve_shard(None, 3, None, None, job) == Shard(2, 3)
    assert resolve_shard(None, None, None, 3, job) == Shard(2, 3)
    assert resolve_shard(None, 5, None, 3, job) == Shard(2, 5)  # the option wins
    assert resolve_shard("2/3", 3, None, None, {}) == Shard(1, 3)  # an agreeing count


@pytest.mark.parametrize(
    ("args", "environ", "named"),
    [
        ((None, None, None, None), {"JOB_COMPLETION_INDEX": "1"}, "JOB_COMPLETION_INDEX"),
        ((None, 3, None, None), {"JOB_COMPLETION_INDEX": "3"}, "JOB_COMPLETION_INDEX"),
        ((None, 3, None, None), {"JOB_COMPLETION_INDEX": "one"}, "JOB_COMPLETION_INDEX"),
        ((None, None, None, 3), {}, "RAG_INGEST_SHARD_COUNT"),
        ((None, 0, None, None), {"JOB_COMPLETION_INDEX": "0"}, "--shard-count"),
        (("1/3", 4, None, None), {}, "--shard-count"),
        ((None, None, "0/3", None), {}, "RAG_INGEST_SHARD"),
    ],
)
def test_contradictions_and_half_values_stop_the_start(
    args: tuple[str | None, int | None, str | None, int | None],
    environ: dict[str, str],
    named: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_shard(*args, environ)
    assert str(caught.value).startswith(named), caught.value


# The last case runs as the console script; the others only vary the value and run
# in-process (``invoke_rag``: the same command and output without a process start).
@pytest.mark.parametrize(
    ("args", "variables", "named", "run"),
    [
        (("--shard", "4/3"), {}, "--shard: ", invoke_rag),
        ((), {"RAG_INGEST_SHARD": "a/b"}, "RAG_INGEST_SHARD: ", invoke_rag),
        ((), {"JOB_COMPLETION_INDEX": "1"}, "JOB_COMPLETION_INDEX is set", invoke_rag),
        ((), {"RAG_INGEST_SHARD_COUNT": "x"}, "RAG_INGEST_SHARD_COUNT: ", invoke_rag),
        (("--shard", "2/3"), {}, "several ingest workers need a Milvus server", run_rag),
    ],
)
def test_the_command_stops_with_one_line(
    tmp_path: Path,
    args: tuple[str, ...],
    variables: dict[str, str],
    named: str,
    run: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    folder = write_files(tmp_path / "docs", {"a.md": "# A\n\nText."})
    result = run(
        "ingest", str(folder), *args, cwd=tmp_path, RAG_MILVUS_URI=str(tmp_path / "m.db"),
        **variables,
    )  # fmt: skip
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert not (tmp_path / "m.db").exists()  # stopped before opening anything


# --- N processes on one server ---------------------------------------------------------------


def paragraphs(topic: str, count: int) -> str:
    body = "\n\n".join(
        f"Paragraph {i} about {topic}: the {topic} bolt number {i} is tightened to {i * 7} Nm "
        f"and checked every {i + 2} weeks by the {topic} crew."
        for i in range(count)
    )
    return f"# {topic.title()}\n\n{body}\n"


def folder_files(count: int) -> dict[str, str]:
    return {f"area{i % 4}/item-{i:03d}.md": paragraphs(f"item{i}", 2 + i % 5) for i in range(count)}


@pytest.fixture(scope="module")
def embeddings() -> Iterator[FakeServer]:
    with serve(FakeOpenAI(FakeOpenAIConfig())) as server:
        yield server


class Cluster:
    """`rag ingest` processes against one Milvus server, and the rows they leave there."""

    def __init__(self, uri: str, embeddings: FakeServer, cwd: Path) -> None:
        self.uri, self.cwd = uri, cwd
        self.variables = {
            "RAG_MILVUS_URI": uri,
            "RAG_MILVUS_TIMEOUT": "30",
            "RAG_EMBEDDING_PROVIDER": "openai",
            "RAG_EMBEDDING_BASE_URL": embeddings.base_url,
            "RAG_EMBEDDING_API_KEY": "test",
            "RAG_EMBEDDING_DIMENSIONS": "384",
            **CHUNKING,
        }

    def start(self, folder: Path, collection: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(RAG_BIN), "ingest", str(folder), "--collection", collection, *args],
            cwd=self.cwd,
            env=cli_env(**self.variables),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(self, folder: Path, collection: str, *args: str) -> str:
        """One `rag ingest` to its end, in this process: the reference the workers must
        match is the same command, without a process start (the workers stay processes)."""
        result = invoke_rag("ingest", str(folder), "--collection", collection, *args,
                            cwd=self.cwd, **self.variables)  # fmt: skip
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        return out

    def workers(self, folder: Path, collection: str, count: int = WORKERS) -> list[str]:
        """``count`` workers started at once, each to the end; their output."""
        started = [self.start(folder, collection, "--shard", f"{k}/{count}")
                   for k in range(1, count + 1)]  # fmt: skip
        return [finish(process) for process in started]

    def rows(self, collection: str) -> Rows:
        client = MilvusClient(uri=self.uri, timeout=30, dedicated=True)
        try:
            found = client.query(
                collection,
                filter='pk != ""',
                output_fields=["pk", "source", "file_hash", "content_hash"],
                limit=16_384,
            )
        finally:
            client.close()
        return {r["pk"]: (r["source"], r["file_hash"], r["content_hash"]) for r in found}

    def converge(self, folder: Path) -> tuple[list[str], Rows]:
        """A single-process run and the sharded workers on the same folder, into their own
        collections: the workers' rows equal the single run's. Returns the workers' outputs
        and the single run's rows."""
        self.run(folder, "single")
        outputs = self.workers(folder, "sharded")
        expected = self.rows("single")
        assert self.rows("sharded") == expected
        return outputs, expected


def finish(process: subprocess.Popen[str], timeout: float = 240) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        stop_process_group(process)
    assert process.returncode == 0, out
    assert "Traceback" not in out, out
    return out


def change(folder: Path) -> None:
    """One file edited, one removed, one added."""
    (folder / "area1/item-001.md").write_text(paragraphs("changed", 4), encoding="utf-8")
    (folder / "area2/item-002.md").unlink()
    (folder / "area3/new.md").write_text(paragraphs("new", 3), encoding="utf-8")


# On the standalone every Strong read waits for its time tick, so eight `rag ingest`
# processes take close to a minute there; it stays in `make test` all the same, because a
# real Milvus is where concurrent workers matter (the suite runs on both cores).
@pytest.fixture(params=["lite-server", pytest.param("standalone", marks=pytest.mark.slow)])
def server(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(
        "milvus_server" if request.param == "lite-server" else "milvus_standalone"
    )


@pytest.mark.server
def test_three_workers_write_what_one_run_writes(
    server: str, embeddings: FakeServer, tmp_path: Path
) -> None:
    cluster = Cluster(server, embeddings, tmp_path)
    folder = write_files(tmp_path / "docs", folder_files(30))
    outputs, expected = cluster.converge(folder)
    assert len({source for source, _, _ in expected.values()}) == 30
    taken = [int(out.split(" takes ")[1].split()[0]) for out in outputs]
    assert sum(taken) == 30 and all(taken), outputs  # each took a part, none took all

    change(folder)
    outputs, expected = cluster.converge(folder)
    sources = {source for source, _, _ in expected.values()}
    assert "area2/item-002.md" not in sources and "area3/new.md" in sources
    removed = [out for out in outputs if "removed: area2/item-002.md" in out]
    assert len(removed) == 1, outputs  # by the one worker whose partition it was in


@pytest.mark.server
def test_a_killed_worker_rerun_converges(
    milvus_server: str, embeddings: FakeServer, tmp_path: Path
) -> None:
    cluster = Cluster(milvus_server, embeddings, tmp_path)
    folder = write_files(tmp_path / "docs", folder_files(36))
    cluster.run(folder, "single_k")
    expected = cluster.rows("single_k")
    victim = Shard(0, WORKERS)
    victim_rows = {pk for pk, (source, _, _) in expected.items() if victim.owns(source)}

    # One request at a time, each slow: each worker takes seconds, time to stop one midway.
    cluster.variables["RAG_CONCURRENCY"] = "1"
    embeddings.fake.config.embed_latency = 0.4
    started: list[subprocess.Popen[str]] = []
    try:
        started = [cluster.start(folder, "sharded_k", "--shard", f"{k}/{WORKERS}")
                   for k in range(1, WORKERS + 1)]  # fmt: skip
        deadline = time.monotonic() + 120
        while not cluster_has(cluster, "sharded_k", victim_rows):
            assert time.monotonic() < deadline, "the first worker wrote nothing"
            assert started[0].poll() is None, "the first worker ended before it was killed"
            time.sleep(0.2)
        os.killpg(started[0].pid, signal.SIGKILL)
        started[0].wait(timeout=30)
        for process in started[1:]:
            finish(process)
    finally:
        embeddings.fake.config.embed_latency = 0.0
        for process in started:
            stop_process_group(process)
    left = cluster.rows("sharded_k")
    assert set(left) != set(expected)  # the kill did leave the run unfinished
    assert set(left) - victim_rows <= set(expected)  # the others finished their parts...
    assert {pk: row for pk, row in left.items() if pk not in victim_rows} == {
        pk: row for pk, row in expected.items() if pk not in victim_rows
    }

    cluster.workers(folder, "sharded_k")
    assert cluster.rows("sharded_k") == expected


def cluster_has(cluster: Cluster, collection: str, wanted: set[str]) -> bool:
    """Some, not all, of ``wanted`` are stored (the collection may not exist yet)."""
    try:
        stored = set(cluster.rows(collection)) & wanted
    except MilvusException:  # the collection does not exist yet
        return False
    return 0 < len(stored) < len(wanted)
