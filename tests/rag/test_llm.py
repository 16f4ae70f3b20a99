"""`rag.llm`: the chat model's client, against the loopback fake endpoint.

``StreamedChatDicts`` replaces the SDK's typed chat client for streamed answers (see its
docstring for why), so what the SDK's client did must still happen: the same request body
and key reach the endpoint, the same text streams back, retries and status errors behave as
the SDK's do, and per-call options (``extra_body``) still land in the body.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from rag.config import load_settings
from rag.llm import StreamedChatDicts, build_chat_model, close_chat_model
from tests.support.fake_openai import FakeServer, serve

MESSAGES = [SystemMessage("Answer from the passages."), HumanMessage("What does E-342 mean?")]
KEY = "sk-test-streamed-dicts"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FakeServer]:
    with serve() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(endpoint: FakeServer) -> None:
    endpoint.fake.reset()


def chat_model(endpoint: FakeServer, **settings: Any) -> Any:
    return build_chat_model(
        load_settings(llm_base_url=endpoint.base_url, llm_api_key=KEY, **settings)
    )


async def streamed_text(llm: Any) -> str:
    return "".join([str(chunk.content) async for chunk in llm.astream(MESSAGES)])


async def test_streamed_answers_match_the_sdks_typed_client(endpoint: FakeServer) -> None:
    llm = chat_model(endpoint)
    try:
        assert isinstance(llm.async_client, StreamedChatDicts)
        ours = await streamed_text(llm)
        ours_request = endpoint.fake.requests[-1]
        llm.async_client = llm.root_async_client.chat.completions  # the SDK's own client
        theirs = await streamed_text(llm)
        theirs_request = endpoint.fake.requests[-1]
    finally:
        await close_chat_model(llm)
    assert ours and ours == theirs
    assert ours_request.json == theirs_request.json
    assert ours_request.headers["authorization"] == f"Bearer {KEY}"
    assert theirs_request.headers["authorization"] == f"Bearer {KEY}"


async def test_extra_body_reaches_the_endpoint(endpoint: FakeServer) -> None:
    # The bundled models' cap rides in extra_body (llama.cpp ignores max_completion_tokens).
    llm = build_chat_model(load_settings(llm_base_url=endpoint.base_url), bundled=True)
    try:
        assert await streamed_text(llm)
    finally:
        await close_chat_model(llm)
    body = endpoint.fake.chat_requests()[-1]
    assert body["stream"] is True and body["max_tokens"] == 200


async def test_a_server_error_is_retried_and_then_raised_as_the_sdks_error(
    endpoint: FakeServer,
) -> None:
    llm = chat_model(endpoint)
    try:
        endpoint.fake.fail_next("chat", 503, count=1)
        assert await streamed_text(llm), "one 503 is retried"
        endpoint.fake.fail_next("chat", 401, count=1)
        with pytest.raises(openai.AuthenticationError):
            await streamed_text(llm)
    finally:
        await close_chat_model(llm)


async def test_a_non_streamed_call_goes_to_the_typed_client(endpoint: FakeServer) -> None:
    llm = chat_model(endpoint)
    try:
        client = llm.async_client
        completion = await client.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], stream=False
        )
    finally:
        await close_chat_model(llm)
    assert completion.choices[0].message.content
