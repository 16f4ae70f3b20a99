"""The retry policy against the libraries' real exception classes, with waits made short."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from pymilvus import MilvusException
from tenacity import RetryCallState

from ingest.retry import (
    MAX_RETRY_AFTER,
    Retrier,
    RetryPolicy,
    explain_failure,
    permanent,
    retry_after,
    retryable,
)
from rag.config import Settings
from rag.errors import IngestFailed, ModelUnavailable, StoreUnavailable
from tests.conftest import make_settings

ENDPOINT = "http://127.0.0.1:9/v1"
SECRET = "sk-test-never-shown-7f3a"
FAST = RetryPolicy(attempts=3, max_wait=0.0)  # no back-off: only Retry-After makes it wait


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    """What the openai client raises for an HTTP answer with this status."""
    request = httpx.Request("POST", f"{ENDPOINT}/embeddings")
    response = httpx.Response(status, headers=headers or {}, request=request)
    classes: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        429: openai.RateLimitError,
    }
    kind = classes.get(status, openai.InternalServerError)
    return kind(f"Error code: {status}", response=response, body=None)


def timeout_error() -> openai.APITimeoutError:
    return openai.APITimeoutError(request=httpx.Request("POST", f"{ENDPOINT}/embeddings"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        str(tmp_path / "m.db"),
        "docs",
        embedding_provider="openai",
        embedding_base_url=ENDPOINT,
        embedding_api_key=SECRET,
    )


class Flaky:
    """A call that raises the given errors in turn, then returns "done"; counts its tries."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.tries = 0

    async def __call__(self) -> str:
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def retrier(
    settings: Settings, policy: RetryPolicy = FAST, **options: object
) -> tuple[Retrier, list[str]]:
    notes: list[str] = []
    return Retrier(policy, settings, notes.append, **options), notes  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (status_error(500), True),
        (status_error(503), True),
        (status_error(408), True),
        (status_error(409), True),
        (status_error(429), True),
        (status_error(400), False),
        (status_error(401), False),
        (status_error(403), False),
        (status_error(404), False),
        (timeout_error(), False),  # the embedding client has already retried it
        (httpx.ReadTimeout("slow"), False),
        (openai.APIConnectionError(request=httpx.Request("POST", ENDPOINT)), True),
        (MilvusException(message="server unavailable"), True),
        (grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="connection refused"), True),
        (ConnectionResetError("reset"), True),
        (RuntimeError("something else"), True),
        (ValueError("our own check"), False),
        (StoreUnavailable("already explained"), False),
        (asyncio.CancelledError(), False),
        (KeyboardInterrupt(), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_which_failures_are_retried(error: BaseException, retried: bool) -> None:
    assert retryable(error) is retried
    if isinstance(error, Exception):
        assert permanent(error) is not retried


def test_retry_after_is_read_in_seconds_or_milliseconds() -> None:
    assert retry_after(status_error(429, {"retry-after": "2.5"})) == 2.5
    assert retry_after(status_error(429, {"retry-after-ms": "250"})) == 0.25
    assert retry_after(status_error(503, {"retry-after": "soon", "retry-after-ms": "x"})) is None
    assert retry_after(status_error(429)) is None
    assert retry_after(MilvusException(message="busy")) is None


async def test_a_transient_failure_is_retried_and_each_wait_announced(settings: Settings) -> None:
    call, notes = retrier(settings)
    flaky = Flaky(status_error(500), status_error(503))
    assert await call(flaky) == "done"
    assert flaky.tries == 3
    assert len(notes) == 2
    assert notes[0].startswith(f"embedding endpoint {ENDPOINT} failed: Error code: 500; ")
    assert notes[0].endswith("trying again in 0.0 s (attempt 2 of 3)")
    assert notes[1].endswith("(attempt 3 of 3)")


async def test_a_rejected_key_is_not_retried_and_is_explained(settings: Settings) -> None:
    call, notes = retrier(settings)
    flaky = Flaky(status_error(401))
    with pytest.raises(ModelUnavailable) as caught:
        await call(flaky)
    assert flaky.tries == 1 and notes == []
    assert str(caught.value) == (
        f"embedding endpoint {ENDPOINT} rejected the API key (401); check RAG_EMBEDDING_API_KEY"
    )
    assert isinstance(caught.value.__cause__, openai.AuthenticationError)


async def test_a_timeout_names_the_clients_bound(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rag.embeddings

    monkeypatch.setattr(rag.embeddings, "EMBEDDING_TIMEOUT", 1.5)
    monkeypatch.setattr(rag.embeddings, "EMBEDDING_RETRIES", 2)
    call, _ = retrier(settings)
    flaky = Flaky(timeout_error())
    with pytest.raises(ModelUnavailable) as caught:
        await call(flaky)
    assert flaky.tries == 1
    assert str(caught.value) == (
        f"embedding endpoint {ENDPOINT} did not answer within 1.5 s (3 tries)"
    )


async def test_milvus_failures_stop_after_the_attempts_with_one_line(settings: Settings) -> None:
    call, notes = retrier(settings)
    unavailable = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="connection refused")
    flaky = Flaky(MilvusException(message="server down"), unavailable, unavailable)
    with pytest.raises(StoreUnavailable) as caught:
        await call(flaky)
    assert flaky.tries == 3 and len(notes) == 2
    where = f"cannot use Milvus at {settings.milvus_uri}"
    assert notes[0].startswith(f"{where}: server down; trying again")
    # gRPC's own first line ("<AioRpcError of RPC that terminated with:") is never shown
    assert str(caught.value) == f"{where}: UNAVAILABLE: connection refused"


async def test_anything_else_stops_the_ingest_by_name(settings: Settings) -> None:
    call, _ = retrier(settings, RetryPolicy(attempts=2, max_wait=0.0))
    flaky = Flaky(RuntimeError("disk on fire"), RuntimeError("disk on fire"))
    with pytest.raises(IngestFailed, match=r"^ingest stopped: RuntimeError: disk on fire$"):
        await call(flaky)
    assert flaky.tries == 2


def test_a_key_in_an_error_text_is_masked(settings: Settings) -> None:
    error = openai.APIConnectionError(
        message=f"proxy refused Bearer {SECRET}", request=httpx.Request("POST", ENDPOINT)
    )
    explained = explain_failure(error, settings)
    assert isinstance(explained, ModelUnavailable)
    assert SECRET not in str(explained)


async def test_retry_after_is_honoured_and_a_rate_limit_outlasts_the_attempts(
    settings: Settings,
) -> None:
    """Two attempts would stop any other failure; a 429 is waited out for the patience."""
    policy = RetryPolicy(attempts=2, max_wait=0.0, rate_limit_patience=60.0)
    call, notes = retrier(settings, policy)
    limited = [status_error(429, {"retry-after-ms": "150"}) for _ in range(4)]
    flaky = Flaky(*limited)
    started = time.monotonic()
    assert await call(flaky) == "done"
    assert flaky.tries == 5
    assert time.monotonic() - started >= 4 * 0.15 - 0.02
    assert len(notes) == 4
    assert notes[0] == (
        f"embedding endpoint {ENDPOINT} is rate-limited (429); wait a moment and try again; "
        "waiting 0.1 s (rate limits are retried for 60 s more)"
    )


async def test_a_rate_limit_that_never_lifts_fails_after_the_patience(settings: Settings) -> None:
    policy = RetryPolicy(attempts=2, max_wait=0.0, rate_limit_patience=0.5)
    call, _ = retrier(settings, policy)
    flaky = Flaky(*(status_error(429, {"retry-after-ms": "100"}) for _ in range(100)))
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match=r"\(429\)"):
        await call(flaky)
    assert 0.5 <= time.monotonic() - started < 5
    assert 3 <= flaky.tries < 100


def test_a_long_retry_after_is_capped() -> None:
    state = RetryCallState(FAST.retrying(), fn=None, args=(), kwargs={})
    try:
        raise status_error(429, {"retry-after": "3600"})
    except openai.RateLimitError:
        state.set_exception(sys.exc_info())  # type: ignore[arg-type]
    assert FAST.wait(state) == MAX_RETRY_AFTER


async def test_a_cancellation_is_never_retried(settings: Settings) -> None:
    call, notes = retrier(settings)
    flaky = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await call(flaky)
    assert flaky.tries == 1 and notes == []


async def test_a_released_collection_is_loaded_again_before_the_next_try(
    settings: Settings,
) -> None:
    loads: list[int] = []
    flaky = Flaky(MilvusException(message="collection not loaded[collection=docs]"))

    async def reload() -> None:
        loads.append(flaky.tries)

    call, _ = retrier(settings, reload=reload)
    assert await call(flaky) == "done"
    assert loads == [1], "loaded once, after the refused try and before the next"
    assert await call(Flaky()) == "done"
    assert loads == [1], "and not again once it is loaded"
