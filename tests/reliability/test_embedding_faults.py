"""The embedding endpoint misbehaves while a folder is ingested (the loopback fake server).

The server records every request it receives, so the assertions are about traffic: how many
requests, how far apart. One writer (``concurrency=1``) keeps the order of requests fixed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rag.embeddings
from ingest.report import IngestReport
from rag.errors import ModelUnavailable
from tests.conftest import OpenEnv, RecordingReporter, fake_embeddings_env, run_rag, write_files
from tests.support.fake_openai import FakeServer, RecordedRequest, serve

pytestmark = pytest.mark.slow

FILES = 6
SETTINGS = {"chunk_size": 200, "chunk_overlap": 20, "batch_size": 8, "concurrency": 1}


def document(number: int) -> str:
    return "\n\n".join(
        f"Pump {number}.{i} in station {number} delivers {i * 7} litres per minute at {i} bar."
        for i in range(20)
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_files(tmp_path / "docs", {f"pump_{n}.txt": document(n) for n in range(FILES)})


@pytest.fixture
def endpoint() -> Iterator[FakeServer]:
    with serve() as server:
        yield server


def embedding_calls(server: FakeServer) -> list[RecordedRequest]:
    return [r for r in list(server.fake.requests) if r.kind == "embeddings"]


async def ingest(
    open_env: OpenEnv, server: FakeServer, folder: Path, **options: object
) -> tuple[IngestReport, int]:
    """Ingest the folder; returns the report and the number of rows stored."""
    env = await open_env(
        embedding_provider="openai",
        embedding_base_url=server.base_url,
        embedding_dimensions=384,
        **SETTINGS,
    )
    with server.fake._lock:  # forget traffic so far, keep the queued faults
        server.fake.requests.clear()
    report = await env.ingest(folder, RecordingReporter(), **options)
    return report, await env.count()


async def clean_batches(open_env: OpenEnv, server: FakeServer, folder: Path) -> int:
    report, rows = await ingest(open_env, server, folder)
    assert report.ok and rows == report.chunks_written
    return len(embedding_calls(server))


async def test_429_retry_after_is_honoured_without_a_retry_storm(
    open_env: OpenEnv, endpoint: FakeServer, folder: Path
) -> None:
    batches = await clean_batches(open_env, endpoint, folder)
    # Six 429s in a row: five exhaust the client's own tries, so the sixth is waited out by
    # the pipeline's retry, which must honour Retry-After too (its own back-off is shorter).
    retry_after = 1.2  # above the pipeline's first back-off (0.5 to 1.0 s)
    endpoint.fake.fail_next("embeddings", 429, count=6, retry_after=retry_after)
    report, rows = await ingest(open_env, endpoint, folder)
    assert report.ok and rows == report.chunks_written

    calls = embedding_calls(endpoint)
    assert [c.status for c in calls[:7]] == [429] * 6 + [200]
    assert len(calls) == batches + 6, "every 429 cost exactly one more request"
    gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(calls[:7])]
    assert min(gaps) >= retry_after - 0.05, f"Retry-After ignored: gaps {gaps}"


@pytest.mark.heavy
async def test_server_errors_are_retried_and_nothing_is_lost(
    open_env: OpenEnv, endpoint: FakeServer, folder: Path
) -> None:
    batches = await clean_batches(open_env, endpoint, folder)
    endpoint.fake.fail_next("embeddings", 500, count=2)
    endpoint.fake.fail_next("embeddings", 503, count=1)
    report, rows = await ingest(open_env, endpoint, folder)
    assert report.ok and rows == report.chunks_written
    assert report.count("added") == FILES
    assert len(embedding_calls(endpoint)) == batches + 3


async def test_a_sustained_rate_limit_slows_the_ingest_down_and_loses_nothing(
    open_env: OpenEnv, endpoint: FakeServer, folder: Path
) -> None:
    """A quota (1 request per 1.5 s here, per minute in real life) is not an outage.

    The ingest needs several times the quota, so most requests are answered 429 at first,
    and each 429 says when a request frees up. The run must wait and finish with every
    chunk, and never send a request before the time the 429 named.
    """
    clean = await clean_batches(open_env, endpoint, folder)
    endpoint.fake.config.rpm_limit, endpoint.fake.config.rate_window = 1, 1.5
    report, rows = await ingest(open_env, endpoint, folder)
    assert report.ok and rows == report.chunks_written > 0
    calls = embedding_calls(endpoint)
    limited = [r for r in calls if r.status == 429]
    assert len(limited) >= 3, "the quota never tripped: the test proves nothing"
    assert len(calls) - len(limited) == clean
    for refused, following in itertools.pairwise(calls):  # one writer: a fixed order
        if refused.status == 429:
            assert refused.retry_after is not None
            gap = following.monotonic - refused.monotonic
            assert gap >= refused.retry_after - 0.05, f"came back after {gap:.2f} s"


async def test_a_rate_limit_that_never_lifts_fails_after_the_patience_in_one_line(
    open_env: OpenEnv, endpoint: FakeServer, folder: Path
) -> None:
    endpoint.fake.fail_next("embeddings", 429, count=10_000, retry_after=0.2)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        await ingest(open_env, endpoint, folder, rate_limit_patience=3.0)
    took = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message and "429" in message, message
    assert 3.0 <= took < 3.0 + 10, f"took {took:.1f} s"


async def test_a_hung_endpoint_times_out_within_a_known_bound(
    open_env: OpenEnv, endpoint: FakeServer, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rag.embeddings, "EMBEDDING_TIMEOUT", 1.0)
    monkeypatch.setattr(rag.embeddings, "EMBEDDING_RETRIES", 1)
    endpoint.fake.config.embed_latency = 30.0  # never answers in time
    tries = rag.embeddings.EMBEDDING_RETRIES + 1
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        await ingest(open_env, endpoint, folder)
    took = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"embedding endpoint {endpoint.base_url} did not answer within 1 s ({tries} tries)"
    )
    # The client's tries and nothing more: the pipeline does not multiply them.
    assert len(embedding_calls(endpoint)) == tries
    # tries x timeout, plus the client's back-off between tries (under a second here)
    assert took < tries * 1.0 + 10, f"took {took:.1f} s"


async def test_a_rejected_key_fails_fast_with_a_clear_message(
    open_env: OpenEnv, endpoint: FakeServer, folder: Path
) -> None:
    endpoint.fake.fail_next("embeddings", 401, count=100)
    with pytest.raises(ModelUnavailable) as caught:
        await ingest(open_env, endpoint, folder)
    assert str(caught.value) == (
        f"embedding endpoint {endpoint.base_url} rejected the API key (401); "
        "check RAG_EMBEDDING_API_KEY"
    )
    assert len(embedding_calls(endpoint)) == 1, "a 401 must not be retried"


def test_a_rejected_key_stops_the_cli_in_one_line_without_printing_it(
    endpoint: FakeServer, folder: Path, tmp_path: Path
) -> None:
    secret = "sk-test-DO-NOT-PRINT-4c1d"
    endpoint.fake.fail_next("embeddings", 401, count=100)
    result = run_rag(
        "ingest",
        str(folder),
        cwd=tmp_path,
        RAG_MILVUS_URI=str(tmp_path / "m.db"),
        **fake_embeddings_env(endpoint.base_url),
        RAG_EMBEDDING_API_KEY=secret,
        **{f"RAG_{k.upper()}": str(v) for k, v in SETTINGS.items()},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 5, output  # ModelUnavailable
    assert result.stderr.strip().splitlines() == [
        f"error: embedding endpoint {endpoint.base_url} rejected the API key (401); "
        "check RAG_EMBEDDING_API_KEY"
    ]
    assert secret not in output
    calls = embedding_calls(endpoint)
    assert len(calls) == 1, "a 401 must not be retried"
    assert calls[0].headers.get("authorization") == f"Bearer {secret}"
