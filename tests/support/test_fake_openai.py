"""Tests for the loopback fake OpenAI server, driven through the *real* clients.

Why: the fake is only useful if ``openai`` / ``langchain-openai`` accept what it sends (base64
embeddings, SSE chunks, error bodies, ``Retry-After``), so every test talks HTTP to ``serve()``
instead of calling the app in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import tiktoken
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

try:  # tests/ on sys.path (pytest's default "prepend" import mode, no tests/__init__.py)
    from fake_openai import FakeOpenAI, FakeOpenAIConfig, FakeServer, embed_text, serve
except ImportError:  # tests/ is a package and the repo root is on sys.path instead
    from tests.support.fake_openai import (
        FakeOpenAI,
        FakeOpenAIConfig,
        FakeServer,
        embed_text,
        serve,
    )

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
NETWORK_ERROR_ROOTS = {"openai", "httpx", "httpx2", "httpcore", "httpcore2", "h11"}

CONTEXT_PROMPT = (
    "Answer using only the numbered context below and cite it.\n\n"
    "[1] The Eiffel Tower is located in Paris. It was completed in 1889.\n"
    "[2] Mount Fuji is the highest mountain in Japan.\n\n"
    "Question: Where is the Eiffel Tower?"
)
CONTEXT_REPLY = "According to the documents, The Eiffel Tower is located in Paris [1]."


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A fresh fake per test, so recorded traffic and queued faults never leak between tests."""
    with serve() as srv:
        yield srv


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def tiktoken_cl100k_cached() -> bool:
    """Whether tiktoken can load cl100k_base without downloading (mirrors tiktoken.load)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return False
    return os.path.exists(os.path.join(cache_dir, hashlib.sha1(CL100K_URL.encode()).hexdigest()))


# ------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------


def test_langchain_embeddings_text_path(server: FakeServer) -> None:
    emb = OpenAIEmbeddings(
        base_url=server.base_url,
        api_key="x",
        model="text-embedding-3-small",
        dimensions=384,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    docs = [
        "The cat sat on the mat.",
        "A cat was sitting on a mat.",
        "Quarterly revenue grew by twelve percent.",
    ]
    vectors = emb.embed_documents(docs)
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(abs(norm(v) - 1.0) < 1e-5 for v in vectors)
    # deterministic across calls, and equal to the module's own function (float32 tolerance)
    again = emb.embed_documents(docs)
    assert again == vectors
    expected = embed_text(docs[0], 384)
    assert max(abs(a - b) for a, b in zip(vectors[0], expected, strict=True)) < 1e-6
    # big batches are encoded off the event loop; same vectors, same order
    many = [f"document number {i} about topic {i % 3}" for i in range(40)]
    for text, vec in zip(many, emb.embed_documents(many), strict=True):
        assert max(abs(a - b) for a, b in zip(vec, embed_text(text, 384), strict=True)) < 1e-6
    # meaningful: shared words => closer
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    # the openai client asks for base64 by default, so that path is what was exercised
    bodies = server.fake.embedding_requests()
    assert len(bodies) == 3
    assert bodies[0]["encoding_format"] == "base64"
    assert bodies[0]["dimensions"] == 384
    assert bodies[0]["input"] == docs


@pytest.mark.asyncio
async def test_langchain_embeddings_async_and_default_dimensions(server: FakeServer) -> None:
    server.fake.config.embedding_dim = 128
    emb = OpenAIEmbeddings(
        base_url=server.base_url, api_key="x", check_embedding_ctx_length=False, max_retries=0
    )
    query = await emb.aembed_query("Where is the Eiffel Tower?")
    doc = (await emb.aembed_documents(["The Eiffel Tower is in Paris."]))[0]
    other = (await emb.aembed_documents(["Bananas are rich in potassium."]))[0]
    assert len(query) == len(doc) == 128
    assert "dimensions" not in server.fake.embedding_requests()[0]
    assert cosine(query, doc) > cosine(query, other)

    small = OpenAIEmbeddings(
        base_url=server.base_url,
        api_key="x",
        dimensions=64,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    assert len(await small.aembed_query("hello")) == 64


def test_openai_client_float_format_and_token_ids(server: FakeServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    as_float = client.embeddings.create(
        model="m", input="hello world", encoding_format="float", dimensions=32
    )
    as_b64 = client.embeddings.create(model="m", input="hello world", dimensions=32)
    assert len(as_float.data[0].embedding) == 32
    assert as_float.usage.prompt_tokens == 2
    diff = max(
        abs(a - b)
        for a, b in zip(as_float.data[0].embedding, as_b64.data[0].embedding, strict=True)
    )
    assert diff < 1e-6
    # token-id inputs: a single list of ids and a batch of id lists
    single = client.embeddings.create(model="m", input=[11, 22, 33], encoding_format="float")
    batch = client.embeddings.create(
        model="m", input=[[11, 22, 33], [11, 22, 34], [901, 902]], encoding_format="float"
    )
    vecs = [d.embedding for d in batch.data]
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert single.data[0].embedding == vecs[0]
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="m", input=[{"not": "valid"}])  # type: ignore[list-item]


def test_langchain_embeddings_token_path_with_stub_encoder(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exercise langchain's default (token ids) path offline with a stand-in tokenizer."""

    class WordEncoder:
        def encode_ordinary(self, text: str) -> list[int]:
            return [int(hashlib.md5(w.lower().encode()).hexdigest()[:6], 16) for w in text.split()]

        def encode(self, text: str, **_: Any) -> list[int]:
            return self.encode_ordinary(text)

    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda _name: WordEncoder())
    emb = OpenAIEmbeddings(base_url=server.base_url, api_key="x", max_retries=0)
    vectors = emb.embed_documents(["red apple pie", "red apple tart", "diesel engine"])
    assert all(len(v) == 384 and abs(norm(v) - 1.0) < 1e-5 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    sent = server.fake.embedding_requests()[0]["input"]
    assert isinstance(sent, list) and all(isinstance(x, list) for x in sent)


@pytest.mark.skipif(
    not tiktoken_cl100k_cached(),
    reason="tiktoken's cl100k_base BPE file is not cached and would need an internet download",
)
def test_langchain_embeddings_token_path_real_tiktoken(server: FakeServer) -> None:
    emb = OpenAIEmbeddings(
        base_url=server.base_url, api_key="x", model="text-embedding-3-small", max_retries=0
    )
    vectors = emb.embed_documents(["The cat sat on the mat.", "The cat sat.", "Stock prices fell."])
    assert all(len(v) == 384 and abs(norm(v) - 1.0) < 1e-5 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert emb.embed_documents(["The cat sat."])[0] == vectors[1]


@pytest.mark.asyncio
async def test_embed_latency_does_not_block_the_server(server: FakeServer) -> None:
    server.fake.config.embed_latency = 0.3
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    start = time.monotonic()
    await asyncio.gather(*(client.embeddings.create(model="m", input=f"t{i}") for i in range(5)))
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.2  # concurrent sleeps, not 5 x 0.3 s in series
    await client.close()


# ------------------------------------------------------------------------------------------
# Chat
# ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_chat_astream_streams_incrementally_and_cites_context(server: FakeServer) -> None:
    server.fake.config.chat_token_delay = 0.05
    llm = ChatOpenAI(base_url=server.base_url, api_key="x", model="fake", max_retries=0)
    arrivals: list[tuple[float, str]] = []
    async for chunk in llm.astream([HumanMessage(CONTEXT_PROMPT)]):
        if isinstance(chunk.content, str) and chunk.content:
            arrivals.append((time.monotonic(), chunk.content))
    text = "".join(c for _, c in arrivals)
    assert text == CONTEXT_REPLY
    assert "[1]" in text
    assert len(arrivals) >= 8
    # streamed for real: content arrived spread out over the per-token delays
    assert arrivals[-1][0] - arrivals[0][0] >= 0.05 * (len(arrivals) - 1) * 0.8

    (body,) = server.fake.chat_requests()
    assert body["stream"] is True
    assert body["model"] == "fake"
    assert body["messages"] == [{"role": "user", "content": CONTEXT_PROMPT}]


@pytest.mark.asyncio
async def test_chat_default_replies_and_overrides(server: FakeServer) -> None:
    llm = ChatOpenAI(base_url=server.base_url, api_key="x", model="fake", max_retries=0)
    no_context = await llm.ainvoke("What is the meaning of life?")
    assert no_context.content == "I don't know."

    condense = await llm.ainvoke(
        [
            SystemMessage("Rephrase the follow-up into a standalone question."),
            HumanMessage("Chat history:\nHuman: Where is the tower?\nFollow Up Input: How tall?"),
        ]
    )
    assert condense.content == "Standalone: How tall?"

    server.fake.config.chat_reply = "Fixed answer."
    assert (await llm.ainvoke("anything")).content == "Fixed answer."
    server.fake.config.chat_reply = lambda messages: f"{len(messages)} messages"
    assert (await llm.ainvoke([SystemMessage("s"), HumanMessage("u")])).content == "2 messages"


def test_openai_stream_usage_and_models(server: FakeServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    assert "fake" in [m.id for m in client.models.list().data]
    chunks = list(
        client.chat.completions.create(
            model="anything",
            messages=[{"role": "user", "content": CONTEXT_PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == CONTEXT_REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(chunks) - 3  # minus role, stop, usage


# ------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------


def test_429_with_retry_after_is_retried_once(server: FakeServer) -> None:
    server.fake.fail_next("chat", 429, retry_after=0.3)
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=1)
    reply = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": CONTEXT_PROMPT}]
    )
    assert reply.choices[0].message.content == CONTEXT_REPLY
    recorded = [r for r in server.fake.requests if r.kind == "chat"]
    assert [(r.status, r.outcome) for r in recorded] == [(429, "fault"), (200, "ok")]
    assert recorded[1].monotonic - recorded[0].monotonic >= 0.25  # Retry-After was honoured


def test_401_fails_fast_without_retries(server: FakeServer) -> None:
    server.fake.fail_next("embeddings", 401, count=3)
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=2)
    with pytest.raises(openai.AuthenticationError) as info:
        client.embeddings.create(model="m", input="hello")
    assert info.value.code == "invalid_api_key"
    assert len(server.fake.embedding_requests()) == 1


def test_custom_error_body_and_reset(server: FakeServer) -> None:
    server.fake.fail_next("chat", 502, body="<html>bad gateway</html>", count=2)
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "q"}])
    assert info.value.status_code == 502
    assert "bad gateway" in info.value.response.text
    server.fake.reset()
    assert server.fake.requests == []
    ok = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "q"}])
    assert ok.choices[0].message.content == "I don't know."


@pytest.mark.asyncio
async def test_dropped_stream_raises_in_client(server: FakeServer) -> None:
    server.fake.drop_stream_after(3)
    llm = ChatOpenAI(base_url=server.base_url, api_key="x", model="fake", max_retries=0)
    received: list[str] = []
    with pytest.raises(Exception) as info:
        async for chunk in llm.astream([HumanMessage(CONTEXT_PROMPT)]):
            received.append(str(chunk.content))
    # langchain re-raises as its own subclass of openai.APIConnectionError, hence the MRO walk
    roots = {cls.__module__.split(".")[0] for cls in type(info.value).__mro__}
    assert roots & NETWORK_ERROR_ROOTS, f"unexpected {type(info.value)!r}: {info.value}"
    assert len(received) == 3 and "".join(received) == "According to "
    assert [r.outcome for r in server.fake.requests] == ["dropped"]

    # only one stream was dropped: the next one completes
    text = "".join([str(c.content) async for c in llm.astream([HumanMessage(CONTEXT_PROMPT)])])
    assert text == CONTEXT_REPLY


def test_rpm_limit_returns_429_with_retry_after(server: FakeServer) -> None:
    server.fake.config.rpm_limit = 3
    server.fake.config.retry_after = 7
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    for _ in range(3):
        client.embeddings.create(model="m", input="ok")
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model="m", input="too many")
    assert info.value.response.headers["retry-after"] == "7"
    # the limit is per endpoint: chat is unaffected
    client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "q"}])
    statuses = [(r.kind, r.status, r.outcome) for r in server.fake.requests]
    assert statuses[3] == ("embeddings", 429, "rate_limited")
    assert statuses[4] == ("chat", 200, "ok")


def test_one_server_serves_clients_on_several_event_loops(server: FakeServer) -> None:
    """langchain-openai caches its async httpx client per base_url; a server shared by tests
    on different event loops must not leave keep-alive connections bound to a dead loop."""

    async def ask() -> str:
        llm = ChatOpenAI(base_url=server.base_url, api_key="x", model="fake", max_retries=0)
        emb = OpenAIEmbeddings(
            base_url=server.base_url, api_key="x", check_embedding_ctx_length=False
        )
        await emb.aembed_query("warm the pool")
        return "".join([str(c.content) async for c in llm.astream(CONTEXT_PROMPT)])

    assert [asyncio.run(ask()) for _ in range(3)] == [CONTEXT_REPLY] * 3


# ------------------------------------------------------------------------------------------
# Standalone entry point
# ------------------------------------------------------------------------------------------


def test_main_runs_standalone() -> None:
    script = Path(__file__).with_name("fake_openai.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--embed-latency", "0.01", "--rpm", "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("FAKE_OPENAI_BASE_URL=http://127.0.0.1:")
        base_url = line.split("=", 1)[1]
        deadline = time.monotonic() + 10
        while True:
            try:
                resp = httpx.get(f"{base_url}/models", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert resp.status_code == 200
        emb = httpx.post(
            f"{base_url}/embeddings",
            json={"model": "m", "input": ["a b"], "encoding_format": "float"},
            timeout=5,
        )
        assert len(emb.json()["data"][0]["embedding"]) == 384
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_accepts_given_fake_and_config() -> None:
    fake = FakeOpenAI(FakeOpenAIConfig(embedding_dim=16, chat_reply="hi"))
    with serve(fake) as srv:
        assert srv.fake is fake
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        resp = httpx.post(f"{srv.base_url}/embeddings", json={"input": "x"}, timeout=5)
        assert len(resp.json()["data"][0]["embedding"]) == 16
    with pytest.raises(httpx.TransportError):  # shut down on exit
        httpx.get(f"{srv.base_url}/models", timeout=1)
