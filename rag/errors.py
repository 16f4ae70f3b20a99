"""Errors a user can cause, each with a message that says what to do.

The CLI prints them as one line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp
import grpc
import httpx
import openai

try:  # openai 3 speaks httpx2 (an API-identical fork of httpx); openai 2 speaks httpx
    import httpx2
except ImportError:  # pragma: no cover - an older openai
    httpx2 = httpx  # type: ignore[no-redef]


class RagError(Exception):
    """Base class for failures the user can act on."""

    exit_code = 1


class ConfigError(RagError):
    """A setting is missing or invalid."""

    exit_code = 2


class StoreUnavailable(RagError):
    """Milvus cannot be reached or refused the request."""

    exit_code = 3


class EmbeddingMismatch(RagError):
    """The collection was built by another embedding model or dimension."""

    exit_code = 4


class ModelUnavailable(RagError):
    """An embedding or chat model cannot be loaded or reached."""

    exit_code = 5


class IngestFailed(RagError):
    """Ingestion stopped before every file was written."""

    exit_code = 6


class SourceNotFound(RagError):
    """The folder or file to ingest does not exist."""

    exit_code = 2


class CollectionNotFound(RagError):
    """A command names a collection that does not exist."""

    exit_code = 2


class HistoryUnavailable(RagError):
    """The chat history database cannot be reached, or holds no history yet."""

    exit_code = 7


# --- explaining outside failures ---------------------------------------------------------
# Every failure of an outside service (an OpenAI-compatible endpoint, Milvus, the history
# database) becomes one of the errors above through `explain`, by the libraries' own
# exception classes (openai's APITimeoutError, AuthenticationError, RateLimitError,
# APIConnectionError; pymilvus' MilvusException; grpc's RpcError; SQLAlchemy's errors),
# and every line it writes passes through `mask` first, so no key or password reaches a
# user, a log or a test report.

MASK = "********"
# An HTTP call's own failures: openai wraps those of a request in APIConnectionError, but
# one that breaks a stream already under way (a read timeout, a dropped connection)
# arrives as the transport's error, from httpx2 under openai 3 and httpx under openai 2.
HTTP_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
_TIMEOUTS = (openai.APITimeoutError, httpx.TimeoutException, httpx2.TimeoutException, TimeoutError)
_UNREACHABLE = (openai.APIConnectionError, httpx.ConnectError, httpx2.ConnectError)
# The async clients speak aiohttp (`rag.llm`, `rag.embeddings`). The SDK's adapter turns
# every aiohttp connection error into httpx2's ConnectTimeout, a refused connection and a
# server hanging up mid-answer alike (openai/_vendor/httpx_aiohttp/transport.py: the map's
# first match wins), so the aiohttp error underneath decides: a connector error means
# nothing answered at that address, only aiohttp's timeouts are timeouts.
_AIOHTTP_UNREACHABLE = (aiohttp.ClientConnectorError,)
_AIOHTTP_TIMEOUTS = (aiohttp.ServerTimeoutError,)
ServiceKind = Literal["embeddings", "chat", "milvus", "history"]
_RAISES: dict[ServiceKind, type[RagError]] = {
    "embeddings": ModelUnavailable,
    "chat": ModelUnavailable,
    "milvus": StoreUnavailable,
    "history": HistoryUnavailable,
}


# The password of ``scheme://user:secret@host``: RFC 3986 userinfo holds no "/", "@" or
# space, so a port ("host:8080/path") is never taken for one, even with an "@" later on.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<password>[^/@\s]*)@", re.I)
# A shorter "secret" is a placeholder ("x", "no"): masking it would mangle every word of
# the line while hiding nothing.
MIN_SECRET = 4


def mask_url_password(url: str) -> str:
    """``scheme://user:secret@host`` with the password hidden, for logs and `rag doctor`."""
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", url)


def url_password(url: str) -> str:
    """The password in ``scheme://user:secret@host``, or ""."""
    found = _URL_PASSWORD.match(url)
    return found["password"] if found else ""


def mask(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every secret and every URL password replaced by ``********``."""
    for secret in sorted(secrets, key=len, reverse=True):  # a key that contains another
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    return mask_url_password(text)


def _aiohttp_cause(error: BaseException) -> aiohttp.ClientError | None:
    """The aiohttp error an HTTP failure was raised from, if it came from aiohttp."""
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:  # pymilvus raises `e from e`
        if isinstance(cause, aiohttp.ClientError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (SQLAlchemy's, gRPC's and aiohttp's carry the
    cause: the SDK reports a dropped connection as "Request timed out.", aiohttp says
    "Server disconnected")."""
    cause = getattr(error, "orig", None) or _aiohttp_cause(error) or error
    details = getattr(cause, "details", None)
    code = getattr(cause, "code", None)
    if isinstance(cause, grpc.RpcError) and callable(details) and callable(code):
        # A raw gRPC error's first line is "<AioRpcError of RPC that terminated with:".
        return f"{code().name}: {details()}"
    text = str(getattr(cause, "message", "") or cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


@dataclass(frozen=True)
class Service:
    """An outside service as the user knows it, for the one line that explains its failure.

    ``label`` names it in a sentence ("embedding endpoint http://…", "Milvus at …"),
    ``key_setting`` is the variable to check when it rejects a key, and ``secrets`` are the
    values that must never be shown (tokens, keys; URL passwords are always masked).
    """

    kind: ServiceKind
    label: str
    key_setting: str | None = None
    secrets: tuple[str, ...] = ()


def is_timeout(error: BaseException) -> bool:
    """The service did not answer in time (the client has already retried it)."""
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        return bool(error.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
    cause = _aiohttp_cause(error)
    if cause is not None:
        return isinstance(cause, _AIOHTTP_TIMEOUTS)
    return isinstance(error, _TIMEOUTS)


def is_unreachable(error: BaseException) -> bool:
    """Nothing answered at the service's address (refused, no such host)."""
    cause = _aiohttp_cause(error)
    if cause is not None:
        return isinstance(cause, _AIOHTTP_UNREACHABLE)
    return isinstance(error, _UNREACHABLE)


def explain(error: BaseException, service: Service, *, timeout: str = "") -> RagError:
    """One line on why ``service`` failed, as the error type a user can act on.

    ``timeout`` adds what the wait was ("within 30 s (3 tries)"). An error that is already
    a RagError is returned as it is: it was explained where it was raised. The line is
    chosen by the libraries' exception classes; a store or database failure always reads
    "cannot use <service>: ...", whatever raised it, so one prefix finds them in a log.
    """
    if isinstance(error, RagError):
        return error
    raises = _RAISES[service.kind]
    # A password in the service's own URL is a secret even where the error repeats it bare.
    secrets = (*service.secrets, *(m["password"] for m in _URL_PASSWORD.finditer(service.label)))
    label = mask(service.label, secrets)
    waited = f"did not answer {timeout or 'in time'}"
    status = getattr(error, "status_code", None)
    if service.kind in ("milvus", "history"):
        line = f"cannot use {label}: {waited if is_timeout(error) else first_line(error)}"
    elif isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        check = f"; check {service.key_setting}" if service.key_setting else ""
        line = f"{label} rejected the API key ({status}){check}"
    elif isinstance(error, openai.RateLimitError):
        line = f"{label} is rate-limited (429); wait a moment and try again"
    elif is_timeout(error):
        line = f"{label} {waited}"
    elif is_unreachable(error):
        line = f"{label} is not reachable; is it running?"
    else:  # openai.APIStatusError: its message starts "Error code: 500 - ..."
        line = f"{label} failed: {first_line(error)}"
    return raises(mask(line, secrets))
