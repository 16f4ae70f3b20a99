"""A loopback, OpenAI-compatible HTTP server for tests and benchmarks.

Why this exists: mocking the ``openai`` client in-process skips exactly the parts that break in
production (HTTP status handling, retries, ``Retry-After``, base64 embeddings, SSE streaming and
broken streams).  This module instead serves the OpenAI REST shape on ``127.0.0.1`` so the *real*
``openai`` / ``langchain-openai`` clients are exercised end to end, for free, deterministically
and without any network access beyond loopback.

Usage in tests::

    from fake_openai import FakeOpenAI, serve

    with serve() as srv:
        emb = OpenAIEmbeddings(base_url=srv.base_url, api_key="x", check_embedding_ctx_length=False)
        emb.embed_query("hello")
        srv.fake.fail_next("chat", 429, retry_after=0.1)
        assert len(srv.fake.chat_requests()) == 0

Standalone (benchmarks)::

    python tests/support/fake_openai.py --port 8765 --embed-latency 0.2 --rpm 600

Responses carry ``Connection: close`` unless ``config.keep_alive`` is set (see that field for
why); the standalone CLI keeps connections alive by default, like the real API.

Endpoints: ``GET /v1/models``, ``POST /v1/embeddings``, ``POST /v1/chat/completions`` (the same
routes are also served without the ``/v1`` prefix).  Any model name and any API key are accepted.

Embeddings are a deterministic hashed bag of words (plus character trigrams at a lower weight),
L2-normalised, so texts that share words have a higher cosine similarity and vector search over
them returns meaningful results.  Token-id input (what ``OpenAIEmbeddings`` sends by default) is
embedded as the bag of the token ids, i.e. texts sharing tokens are similar too; note that the
same text therefore gets a *different* vector via the token path than via the string path.

Default chat reply (``FakeOpenAIConfig.chat_reply is None``), chosen in this order:

1. *Condense request*: if a system/developer/user message contains "standalone question" (also
   "stand-alone"/"stand alone", any case), the reply is ``"Standalone: <q>"`` where ``<q>`` is the
   last line of the last user message that ends with ``?`` (a short leading label such as
   ``"Follow Up Input: "`` is removed), or the whole last user message if no line ends with ``?``.
2. *Numbered context*: if a message contains blocks introduced by ``[n]`` at the start of a line,
   the reply is ``"According to the documents, <first sentence of the lowest-numbered block>
   [n]."`` (block 1 normally, so the reply cites ``[1]``).  The most recent message holding such
   blocks is used.
3. Otherwise ``"I don't know."``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_REPLY_NO_CONTEXT",
    "EndpointKind",
    "FakeOpenAI",
    "FakeOpenAIConfig",
    "FakeServer",
    "Fault",
    "RecordedRequest",
    "StreamDropped",
    "default_reply",
    "embed_text",
    "serve",
    "split_reply",
]

EndpointKind = Literal["chat", "embeddings"]
"""Endpoint kinds that faults and rate limits apply to (``models`` is never faulted)."""

DEFAULT_REPLY_NO_CONTEXT = "I don't know."

_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


# --------------------------------------------------------------------------------------------
# Configuration and recording
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected failure: the request that consumes it is answered with ``status``.

    Kept as data (not a callback) so a test can inspect what is still queued.
    """

    status: int
    retry_after: float | None = None
    body: str | None = None  # raw response body; None => OpenAI-style JSON error


def _empty_fault_queues() -> dict[str, deque[Fault]]:
    return {"chat": deque(), "embeddings": deque()}


@dataclass
class FakeOpenAIConfig:
    """Behaviour knobs, read by the server on every request so tests may mutate them mid-run."""

    embedding_dim: int = 384
    embed_latency: float = 0.0  # seconds per /embeddings request
    embed_jitter: float = 0.0  # +- uniform jitter in seconds
    chat_first_token_delay: float = 0.0
    chat_token_delay: float = 0.0  # delay between streamed chunks
    chat_reply: str | Callable[[list[dict[str, Any]]], str] | None = None  # None => default_reply
    rpm_limit: int | None = None  # requests per minute per endpoint; over it -> 429 + Retry-After
    rate_window: float = 60.0  # the quota's window in seconds (tests shorten the minute)
    # Retry-After on rate-limit 429s: None tells the truth (seconds until the oldest request
    # leaves the 60 s window, as real APIs roughly do); a number sends that value instead.
    retry_after: float | None = None
    models: list[str] = field(
        default_factory=lambda: ["fake", "gpt-4o-mini", "text-embedding-3-small"]
    )
    trigram_weight: float = 0.5  # relative L2 weight of character trigrams vs. whole words
    # False => every response says "Connection: close".  langchain-openai caches one async
    # httpx client per base_url, so a server shared by tests running on different event loops
    # would otherwise hand a keep-alive connection from a closed loop to the next test
    # ("RuntimeError: Event loop is closed").  Benchmarks may turn it on for realism.
    keep_alive: bool = False
    # fault injection: a queue of faults consumed one per request, per endpoint kind
    faults: dict[str, deque[Fault]] = field(default_factory=_empty_fault_queues)
    # chunk counts after which the next streamed chat responses are cut off (one per stream)
    stream_drops: deque[int] = field(default_factory=deque)


@dataclass
class RecordedRequest:
    """What the server saw, so tests can assert on traffic (e.g. "no retry storm").

    ``status`` is the HTTP status answered; ``outcome`` is one of ``"ok"``, ``"fault"``,
    ``"rate_limited"``, ``"bad_request"``, ``"not_found"``, ``"dropped"`` (stream cut off) or
    ``"pending"`` (still being served).
    """

    method: str
    path: str
    kind: str  # "chat" | "embeddings" | "models" | "other"
    json: dict[str, Any] | None
    headers: dict[str, str]
    time: float  # time.time() on arrival
    monotonic: float  # time.monotonic() on arrival
    status: int = 0
    outcome: str = "pending"
    retry_after: float | None = None  # the Retry-After answered, if any


class StreamDropped(Exception):
    """Raised inside a streaming body to make uvicorn cut the connection (no ``[DONE]``)."""


# --------------------------------------------------------------------------------------------
# Deterministic embeddings
# --------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    (  # noqa: SIM905 - a word string reads better than a 38-line literal
        "a an and are as at be by do does for from has have how i in is it its of on or that the "
        "this to was were what when where which who why will with you"
    ).split()
)


@lru_cache(maxsize=1 << 17)
def _feature(token: str, dim: int) -> tuple[int, float]:
    """Stable (index, sign) for a token: blake2b, so it never depends on PYTHONHASHSEED."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    index = int.from_bytes(digest[:6], "little") % dim
    sign = 1.0 if digest[7] & 1 else -1.0
    return index, sign


def embed_text(text: str, dim: int, trigram_weight: float = 0.5) -> list[float]:
    """Hashed bag-of-words (+ char trigrams) vector, L2-normalised.

    Why: a pure hash would make every pair of texts unrelated; this keeps lexical overlap
    visible as cosine similarity so retrieval tests return sensible neighbours.
    """
    words = _WORD_RE.findall(text.lower())
    content = [w for w in words if w not in _STOPWORDS] or words
    vec = [0.0] * dim
    if not content:
        index, sign = _feature("\x00empty", dim)
        vec[index] = sign
        return vec
    for word in content:
        index, sign = _feature("w:" + word, dim)
        vec[index] += sign
        if trigram_weight > 0 and len(word) > 2:
            padded = f"#{word}#"
            grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
            weight = trigram_weight / math.sqrt(len(grams))
            for gram in grams:
                index, sign = _feature("g:" + gram, dim)
                vec[index] += sign * weight
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:  # pathological cancellation; stay deterministic and unit length
        index, sign = _feature("\x00zero", dim)
        vec[index] = sign
        return vec
    return [v / norm for v in vec]


def _inputs_as_texts(raw: Any) -> list[str] | None:
    """Normalise every accepted ``input`` shape to texts; None if the shape is invalid.

    Token ids become ``"tok<id>"`` words so token overlap maps to vector similarity.
    """

    def tokens_to_text(ids: list[Any]) -> str:
        return " ".join(f"tok{int(i)}" for i in ids)

    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        if all(isinstance(x, int) for x in raw) and raw:
            return [tokens_to_text(raw)]
        texts: list[str] = []
        for item in raw:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(x, int) for x in item):
                texts.append(tokens_to_text(item))
            else:
                return None
        return texts
    return None


# --------------------------------------------------------------------------------------------
# Deterministic chat replies
# --------------------------------------------------------------------------------------------

_CONDENSE_RE = re.compile(r"stand[\s-]?alone question", re.IGNORECASE)
_BLOCK_RE = re.compile(r"^[ \t]*\[(\d+)\]", re.MULTILINE)
_SENTENCE_RE = re.compile(r"(.+?[.!?])(?=\s|$)")
_LABEL_RE = re.compile(r"^[A-Za-z][\w \-]{0,40}:\s+")


def _message_text(message: dict[str, Any]) -> str:
    """Text of a message whose ``content`` is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(p.get("text", "")) if isinstance(p, dict) else str(p)
            for p in content
            if not isinstance(p, dict) or p.get("type", "text") == "text"
        ]
        return "\n".join(parts)
    return ""


def _numbered_blocks(text: str) -> dict[int, str]:
    """Map n -> whitespace-collapsed text of every ``[n]`` block in ``text``."""
    matches = list(_BLOCK_RE.finditer(text))
    blocks: dict[int, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[match.end() : end].split()).lstrip(":.-) ")
        if body and int(match.group(1)) not in blocks:
            blocks[int(match.group(1))] = body
    return blocks


def default_reply(messages: list[dict[str, Any]]) -> str:
    """Deterministic RAG-shaped reply (rules in the module docstring)."""
    prompt_roles = {"system", "developer", "user"}
    if any(
        _CONDENSE_RE.search(_message_text(m)) for m in messages if m.get("role") in prompt_roles
    ):
        users = [_message_text(m) for m in messages if m.get("role") == "user"]
        last = users[-1] if users else ""
        lines = [ln.strip() for ln in last.splitlines() if ln.strip()]
        questions = [ln for ln in lines if ln.endswith("?")]
        question = _LABEL_RE.sub("", questions[-1]) if questions else " ".join(last.split())
        return f"Standalone: {question}"

    for message in reversed(messages):
        if message.get("role") not in prompt_roles:
            continue
        blocks = _numbered_blocks(_message_text(message))
        if blocks:
            n = min(blocks)
            match = _SENTENCE_RE.match(blocks[n])
            sentence = (match.group(1) if match else blocks[n]).rstrip(" .!?")
            return f"According to the documents, {sentence} [{n}]."
    return DEFAULT_REPLY_NO_CONTEXT


def split_reply(reply: str) -> list[str]:
    """Word-sized chunks that keep their trailing spaces, so ``"".join(chunks) == reply``."""
    return [c for c in re.split(r"(?<=\s)(?=\S)", reply) if c]


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def _count_tokens(text: str) -> int:
    return len(_WORD_RE.findall(text))


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    err_type, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "error", None))
    return {
        "error": {
            "message": message or f"Injected fake error (HTTP {status}).",
            "type": err_type,
            "param": None,
            "code": code,
        }
    }


def _retry_after_value(seconds: float) -> str:
    """Header value; integral seconds are written without a fraction for strict parsers."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class _ConnectionCloseMiddleware:
    """Adds ``Connection: close`` to every response unless ``config.keep_alive`` is set."""

    def __init__(self, app: ASGIApp, fake: FakeOpenAI) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.fake.config.keep_alive:
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)


class FakeOpenAI:
    """State (config, recorded traffic, pending faults) plus the FastAPI ``app`` serving it.

    Thread-safe for the intended use: the server runs in a background thread while the test
    thread mutates ``config`` / queues faults / reads ``requests``.
    """

    def __init__(self, config: FakeOpenAIConfig | None = None) -> None:
        self.config: FakeOpenAIConfig = config if config is not None else FakeOpenAIConfig()
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self._rng = random.Random(0)
        self.app: FastAPI = self._build_app()

    # ---- inspection / control (called from tests) -----------------------------------------

    def chat_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every chat request received, rejected ones included."""
        with self._lock:
            return [r.json or {} for r in self.requests if r.kind == "chat"]

    def embedding_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every embeddings request received, rejected ones included."""
        with self._lock:
            return [r.json or {} for r in self.requests if r.kind == "embeddings"]

    def fail_next(
        self,
        endpoint: EndpointKind,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next ``count`` ``endpoint`` requests with ``status``.

        The body is an OpenAI-style JSON error unless ``body`` (sent verbatim) is given; a
        ``Retry-After`` header is added when ``retry_after`` is given.
        """
        if endpoint not in ("chat", "embeddings"):
            raise ValueError(f"endpoint must be 'chat' or 'embeddings', not {endpoint!r}")
        with self._lock:
            queue = self.config.faults.setdefault(endpoint, deque())
            queue.extend(Fault(status, retry_after, body) for _ in range(count))

    def drop_stream_after(self, n_chunks: int, count: int = 1) -> None:
        """Cut the next ``count`` streamed chat responses after ``n_chunks`` SSE events.

        The first event is the role chunk, so ``n_chunks=3`` delivers the role chunk and two
        content chunks, then closes the connection mid-body (no ``[DONE]``).  Non-streaming
        requests do not consume these.
        """
        with self._lock:
            self.config.stream_drops.extend([n_chunks] * count)

    def reset(self) -> None:
        """Forget recorded requests, queued faults/drops and rate-limit windows.

        The other config values (latency, reply, limits) are kept; assign a new
        ``FakeOpenAIConfig`` to restore defaults.
        """
        with self._lock:
            self.requests.clear()
            for queue in self.config.faults.values():
                queue.clear()
            self.config.stream_drops.clear()
            self._windows.clear()

    # ---- request plumbing ------------------------------------------------------------------

    async def _record(self, request: Request, kind: str) -> RecordedRequest:
        body: dict[str, Any] | None = None
        raw = await request.body()
        if raw:
            try:
                parsed = json.loads(raw)
                body = parsed if isinstance(parsed, dict) else {"_": parsed}
            except ValueError:
                body = None
        rec = RecordedRequest(
            method=request.method,
            path=request.url.path,
            kind=kind,
            json=body,
            headers=dict(request.headers),
            time=time.time(),
            monotonic=time.monotonic(),
        )
        with self._lock:
            self.requests.append(rec)
        return rec

    def _gate(self, kind: str, rec: RecordedRequest) -> Response | None:
        """Apply a queued fault or the RPM limit; None means the request may proceed."""
        cfg = self.config
        with self._lock:
            queue = cfg.faults.get(kind)
            fault = queue.popleft() if queue else None
            if fault is None and cfg.rpm_limit is not None:
                now = time.monotonic()
                window = self._windows.setdefault(kind, deque())
                while window and window[0] <= now - cfg.rate_window:
                    window.popleft()
                if len(window) >= cfg.rpm_limit:
                    wait = cfg.retry_after
                    if wait is None:
                        wait = math.ceil(max(0.0, window[0] + cfg.rate_window - now) * 10) / 10
                    fault = Fault(429, wait, None)
                    rec.outcome = "rate_limited"
                else:
                    window.append(now)
        if fault is None:
            return None
        if rec.outcome == "pending":
            rec.outcome = "fault"
        rec.status, rec.retry_after = fault.status, fault.retry_after
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = _retry_after_value(fault.retry_after)
        if fault.body is not None:
            return Response(fault.body, status_code=fault.status, headers=headers)
        message = None
        if rec.outcome == "rate_limited":
            message = (
                f"Rate limit reached: {cfg.rpm_limit} requests per {cfg.rate_window:g} s (fake)."
            )
        return JSONResponse(_error_body(fault.status, message), fault.status, headers=headers)

    @staticmethod
    def _bad_request(rec: RecordedRequest, message: str) -> JSONResponse:
        rec.status, rec.outcome = 400, "bad_request"
        return JSONResponse(_error_body(400, message), 400)

    # ---- endpoints ---------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="fake-openai", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_middleware(_ConnectionCloseMiddleware, fake=self)

        async def models(request: Request) -> Response:
            rec = await self._record(request, "models")
            rec.status, rec.outcome = 200, "ok"
            created = int(time.time())
            data = [
                {"id": m, "object": "model", "created": created, "owned_by": "fake-openai"}
                for m in self.config.models
            ]
            return JSONResponse({"object": "list", "data": data})

        async def embeddings(request: Request) -> Response:
            rec = await self._record(request, "embeddings")
            if (rejected := self._gate("embeddings", rec)) is not None:
                return rejected
            body = rec.json or {}
            texts = _inputs_as_texts(body.get("input"))
            if texts is None:
                return self._bad_request(rec, "'input' must be a string or list of strings/ids.")
            cfg = self.config
            dim = body.get("dimensions") or cfg.embedding_dim
            if not isinstance(dim, int) or dim <= 0:
                return self._bad_request(rec, "'dimensions' must be a positive integer.")
            delay = cfg.embed_latency
            if cfg.embed_jitter:
                delay += self._rng.uniform(-cfg.embed_jitter, cfg.embed_jitter)
            if delay > 0:
                await asyncio.sleep(delay)
            as_base64 = body.get("encoding_format") == "base64"

            def encode_all() -> list[dict[str, Any]]:
                data = []
                for index, text in enumerate(texts):
                    vec = embed_text(text, dim, cfg.trigram_weight)
                    value: list[float] | str = (
                        base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode("ascii")
                        if as_base64
                        else vec
                    )
                    data.append({"object": "embedding", "index": index, "embedding": value})
                return data

            # ~1 ms per chunk-sized text: a big batch in a worker thread keeps the loop (and the
            # simulated latency of concurrent requests) responsive during benchmarks
            data = await asyncio.to_thread(encode_all) if len(texts) > 16 else encode_all()
            n_tokens = sum(_count_tokens(t) for t in texts)
            rec.status, rec.outcome = 200, "ok"
            return JSONResponse(
                {
                    "object": "list",
                    "data": data,
                    "model": body.get("model", "text-embedding-3-small"),
                    "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
                }
            )

        async def chat_completions(request: Request) -> Response:
            rec = await self._record(request, "chat")
            if (rejected := self._gate("chat", rec)) is not None:
                return rejected
            body = rec.json or {}
            messages = body.get("messages")
            if not isinstance(messages, list):
                return self._bad_request(rec, "'messages' must be a list.")
            cfg = self.config
            reply_cfg = cfg.chat_reply
            if reply_cfg is None:
                reply = default_reply(messages)
            elif callable(reply_cfg):
                reply = str(reply_cfg(messages))
            else:
                reply = reply_cfg
            chunks = split_reply(reply)
            model = str(body.get("model", "fake"))
            prompt_tokens = sum(
                _count_tokens(_message_text(m)) for m in messages if isinstance(m, dict)
            )
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(chunks),
                "total_tokens": prompt_tokens + len(chunks),
            }
            completion_id = f"chatcmpl-fake-{uuid.uuid4().hex[:24]}"
            created = int(time.time())

            if not body.get("stream"):
                delay = cfg.chat_first_token_delay + cfg.chat_token_delay * max(len(chunks) - 1, 0)
                if delay > 0:
                    await asyncio.sleep(delay)
                rec.status, rec.outcome = 200, "ok"
                return JSONResponse(
                    {
                        "id": completion_id,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "system_fingerprint": None,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply, "refusal": None},
                                "logprobs": None,
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )

            with self._lock:
                drop_after = cfg.stream_drops.popleft() if cfg.stream_drops else None
            stream_options = body.get("stream_options") or {}
            include_usage = bool(stream_options.get("include_usage"))
            rec.status, rec.outcome = 200, "ok"

            def event(delta: dict[str, Any], finish: str | None) -> str:
                chunk: dict[str, Any] = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
                if include_usage:
                    chunk["usage"] = None
                return f"data: {json.dumps(chunk)}\n\n"

            async def sse() -> AsyncIterator[str]:
                events = [event({"role": "assistant", "content": "", "refusal": None}, None)]
                events += [event({"content": c}, None) for c in chunks]
                events.append(event({}, "stop"))
                if include_usage:
                    usage_chunk = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": usage,
                    }
                    events.append(f"data: {json.dumps(usage_chunk)}\n\n")
                events.append("data: [DONE]\n\n")
                if cfg.chat_first_token_delay > 0:
                    await asyncio.sleep(cfg.chat_first_token_delay)
                # a drop never lets [DONE] through, even if n_chunks exceeds the stream length
                drop_at = None if drop_after is None else min(drop_after, len(events) - 1)
                for i, payload in enumerate(events):
                    if drop_at is not None and i >= drop_at:
                        rec.outcome = "dropped"
                        raise StreamDropped(f"fake stream dropped after {drop_after} chunks")
                    # pause between content chunks only (role chunk rides with the first token)
                    if i >= 2 and i <= len(chunks) and cfg.chat_token_delay > 0:
                        await asyncio.sleep(cfg.chat_token_delay)
                    yield payload

            return StreamingResponse(
                sse(),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )

        async def not_found(request: Request, path: str) -> Response:
            rec = await self._record(request, "other")
            rec.status, rec.outcome = 404, "not_found"
            msg = f"Unknown fake endpoint {request.method} /{path}"
            return JSONResponse(_error_body(404, msg), 404)

        for prefix in ("/v1", ""):
            app.add_api_route(f"{prefix}/models", models, methods=["GET"])
            app.add_api_route(f"{prefix}/embeddings", embeddings, methods=["POST"])
            app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
        app.add_api_route(
            "/{path:path}", not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
        )
        return app


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


class _HideStreamDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every *intentional* dropped stream."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        pending: list[BaseException] = [exc] if exc is not None else []
        while pending:
            current = pending.pop()
            if isinstance(current, StreamDropped):
                return False
            if isinstance(current, BaseExceptionGroup):
                pending.extend(current.exceptions)
            for linked in (current.__cause__, current.__context__):
                if linked is not None and linked is not current:
                    pending.append(linked)
        return True


_STREAM_DROP_FILTER = _HideStreamDrops()


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if _STREAM_DROP_FILTER not in logger.filters:
        logger.addFilter(_STREAM_DROP_FILTER)


def _uvicorn_server(app: FastAPI, log_level: str, *, own_logging: bool) -> uvicorn.Server:
    """uvicorn on the pure-Python h11 stack, so a dropped stream behaves the same everywhere.

    ``own_logging=False`` keeps uvicorn from reconfiguring the host process's logging (tests).
    """
    extra: dict[str, Any] = {} if own_logging else {"log_config": None}
    config = uvicorn.Config(
        app,
        log_level=log_level,
        **extra,
        access_log=False,
        lifespan="off",
        ws="none",
        http="h11",
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@dataclass
class FakeServer:
    """Handle yielded by :func:`serve`."""

    fake: FakeOpenAI
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """What to pass as ``base_url`` to openai / langchain-openai clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


@contextmanager
def serve(
    fake: FakeOpenAI | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> Iterator[FakeServer]:
    """Run ``fake`` under uvicorn in a daemon thread on ``host:port`` (0 = a free port).

    The socket is bound here, before the thread starts, so the port is known and race-free;
    the context returns only once uvicorn accepts connections, and exiting it shuts the
    server down and joins the thread.
    """
    fake = fake or FakeOpenAI()
    _install_log_filter()
    sock = _bind(host, port)
    server = _uvicorn_server(fake.app, log_level, own_logging=False)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("fake OpenAI server thread died during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake OpenAI server not ready after {startup_timeout}s")
            time.sleep(0.005)
        yield FakeServer(fake=fake, host=host, port=sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """Standalone entry point so benchmarks can run the fake as a separate process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--embedding-dim", type=int, default=384)
    parser.add_argument("--embed-latency", type=float, default=0.0)
    parser.add_argument("--embed-jitter", type=float, default=0.0)
    parser.add_argument("--chat-first-token-delay", type=float, default=0.0)
    parser.add_argument("--chat-token-delay", type=float, default=0.0)
    parser.add_argument("--chat-reply", default=None, help="fixed chat reply (default: rules)")
    parser.add_argument("--rpm", type=int, default=None, help="requests/min per endpoint")
    parser.add_argument(
        "--rate-window", type=float, default=60.0, help="seconds the --rpm quota is counted over"
    )
    parser.add_argument(
        "--retry-after", type=float, default=None, help="fixed Retry-After on rpm 429s"
    )
    parser.add_argument(
        "--no-keep-alive",
        action="store_true",
        help="answer 'Connection: close' (keep-alive is on by default here, as with the real API)",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    config = FakeOpenAIConfig(
        embedding_dim=args.embedding_dim,
        embed_latency=args.embed_latency,
        embed_jitter=args.embed_jitter,
        chat_first_token_delay=args.chat_first_token_delay,
        chat_token_delay=args.chat_token_delay,
        chat_reply=args.chat_reply,
        rpm_limit=args.rpm,
        rate_window=args.rate_window,
        retry_after=args.retry_after,
        keep_alive=not args.no_keep_alive,
    )
    fake = FakeOpenAI(config)
    _install_log_filter()
    sock = _bind(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"FAKE_OPENAI_BASE_URL=http://{host}:{sock.getsockname()[1]}/v1", flush=True)
    _uvicorn_server(fake.app, args.log_level, own_logging=True).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
