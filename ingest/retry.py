"""When a call to Milvus or the embedding API fails: wait and try again, or stop in one line.

The policy, in tenacity's terms:
- *retry* transient failures only. ``permanent`` ones are passed on at once: our own errors,
  bad requests and rejected keys (a 4xx other than 408, 409, 429), and timeouts, because the
  embedding client has already retried a timed-out request (``rag.embeddings.EMBEDDING_RETRIES``)
  and retrying each of its tries again would multiply the worst case instead of bounding it;
- *wait* exponentially with jitter (0.5, 1, 2, 4 s ... up to ``max_wait``), never less than a
  Retry-After the server sent (capped, so a run says so rather than hangs);
- *stop* after ``attempts`` tries; a rate limit is not an outage (the API works, it only asks
  us to slow down), so a 429 is waited out for ``rate_limit_patience`` seconds instead.
Each wait is announced in one line, so an outage shows as a few notes and not as silence, and
what still fails is explained by ``rag.errors.explain`` naming the service at fault.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import httpx
import openai
import pymilvus
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from rag import embeddings
from rag.errors import IngestFailed, RagError, explain, is_timeout
from rag.store.milvus import milvus_service

if TYPE_CHECKING:
    from rag.config import Settings

T = TypeVar("T")
MAX_RETRY_AFTER = 120.0  # a longer Retry-After is capped: the run says so rather than hang
# A per-minute quota needs up to a minute per window to free up; a run over it keeps going.
RATE_LIMIT_PATIENCE = 900.0
RETRIED_STATUSES = (408, 409, 429)  # the 4xx answers that a later try can get past


def permanent(error: BaseException) -> bool:
    """A failure no retry can fix (see the module docstring for why timeouts count)."""
    if isinstance(error, RagError | ValueError | TypeError | KeyError | AssertionError):
        return True
    if is_timeout(error):
        return True
    if isinstance(error, openai.APIStatusError):
        return 400 <= error.status_code < 500 and error.status_code not in RETRIED_STATUSES
    return False


def retryable(error: BaseException) -> bool:
    """Retried: an ``Exception`` that is not permanent.

    tenacity hands every ``BaseException`` of a try to this predicate (its attempt catches
    them all), so a cancellation must be refused here or it would be retried, and a
    cancelled run would go on.
    """
    return isinstance(error, Exception) and not permanent(error)


def rate_limited(error: BaseException | None) -> bool:
    return isinstance(error, openai.RateLimitError)


def retry_after(error: BaseException | None) -> float | None:
    """Seconds a rate-limited (429) or unavailable (503) server asked us to wait, if it did."""
    if not isinstance(error, openai.APIStatusError | httpx.HTTPStatusError):
        return None
    headers = error.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def explain_failure(error: BaseException, settings: Settings) -> RagError:
    """One line for an error that survived every retry, naming the service at fault.

    By the libraries' classes: openai's and httpx' errors come from the embedding endpoint;
    pymilvus', gRPC's and connection errors from Milvus; anything else stopped the ingest.
    The limits are read at call time, so a changed ``rag.embeddings`` setting is the one told.
    """
    if isinstance(error, RagError):
        return error
    if isinstance(error, openai.OpenAIError | httpx.HTTPError):
        tries = embeddings.EMBEDDING_RETRIES + 1
        waited = f"within {embeddings.EMBEDDING_TIMEOUT:g} s ({tries} tries)"
        return explain(error, embeddings.embedding_service(settings), timeout=waited)
    if isinstance(error, pymilvus.MilvusException | grpc.RpcError | ConnectionError | TimeoutError):
        return explain(error, milvus_service(settings))
    return IngestFailed(f"ingest stopped: {type(error).__name__}: {error}")


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome and state.outcome.failed else None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long one call is tried."""

    attempts: int = 5
    max_wait: float = 8.0
    rate_limit_patience: float = RATE_LIMIT_PATIENCE

    def stop(self, state: RetryCallState) -> bool:
        if rate_limited(_failure(state)):
            return stop_after_delay(self.rate_limit_patience)(state)
        return stop_after_attempt(self.attempts)(state)

    def wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(multiplier=0.5, max=self.max_wait, jitter=0.5)(state)
        asked = retry_after(_failure(state))
        return max(backoff, min(asked, MAX_RETRY_AFTER) if asked else 0.0)

    def next_step(self, state: RetryCallState) -> str:
        """What happens after a failed try, for the one line that announces it."""
        seconds = state.upcoming_sleep
        if rate_limited(_failure(state)):
            left = max(0.0, self.rate_limit_patience - (state.seconds_since_start or 0.0))
            return f"waiting {seconds:.1f} s (rate limits are retried for {left:.0f} s more)"
        return (
            f"trying again in {seconds:.1f} s "
            f"(attempt {state.attempt_number + 1} of {self.attempts})"
        )

    def retrying(
        self, before_sleep: Callable[[RetryCallState], None] | None = None
    ) -> AsyncRetrying:
        return AsyncRetrying(
            stop=self.stop,
            wait=self.wait,
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,  # the last error itself, not tenacity's RetryError, is explained
        )


class Retrier:
    """Runs calls to Milvus and the embedding API under one policy for a whole run.

    ``note`` gets one line per wait. ``reload`` brings a collection back after a restarted
    Milvus server answered that it is released (not loaded): the next try of any call loads
    it first, inside that try, so a reload that fails is one more failed try.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        settings: Settings,
        note: Callable[[str], None],
        *,
        reload: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.policy, self.settings, self.note, self.reload = policy, settings, note, reload
        self._released = False

    async def __call__(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``func(*args)``, retried; an error that outlasts the policy is explained."""
        try:
            result: T = await self.policy.retrying(self._announce)(self._try, func, *args)
            return result
        except RagError:
            raise
        except Exception as error:
            raise explain_failure(error, self.settings) from error

    async def _try(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._released and self.reload is not None:
            await self.reload()
            self._released = False
        try:
            return await func(*args)
        except Exception as error:
            self._released = self._released or collection_released(error)
            raise

    def _announce(self, state: RetryCallState) -> None:
        error = _failure(state)
        if error is not None:
            line = explain_failure(error, self.settings)
            self.note(f"{line}; {self.policy.next_step(state)}")


def collection_released(error: BaseException) -> bool:
    """Milvus refused a call because the collection is not loaded (as after a restart)."""
    text = str(error).lower()
    return "released" in text or "not loaded" in text


@contextlib.contextmanager
def quiet_milvus_client() -> Iterator[None]:
    """Silence pymilvus' own per-attempt tracebacks while a run retries.

    pymilvus logs every failed call with a full traceback through its own handler; a run
    already reports each retry and the final failure in one line, so an outage would
    otherwise bury those lines under hundreds of traceback lines.
    Debug logging (``rag -v``) keeps them.
    """
    global _quieted, _saved_level
    logger = logging.getLogger("pymilvus")
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    if _quieted == 0:  # runs may overlap (chat uploads): the first saves, the last restores
        _saved_level = logger.level
        logger.setLevel(logging.CRITICAL)
    _quieted += 1
    try:
        yield
    finally:
        _quieted -= 1
        if _quieted == 0:
            logger.setLevel(_saved_level)


_quieted = 0
_saved_level = logging.NOTSET
