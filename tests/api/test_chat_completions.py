"""`POST /v1/chat/completions` and `GET /v1/models` as OpenAI clients see them.

The official openai SDK is the client (what users will point at the API), and plain
httpx reads the fields the SDK does not model: the sources, in the completion and in the
last chunk of a stream. The fake chat model cites [1] with the first passage's sentence,
so the expected text follows from the documents the test ingested.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from tests.api.conftest import COLLECTION, RunningApi

QUESTION = "What torque do the anchor nuts need?"


@pytest_asyncio.fixture(loop_scope="function")  # the client's pool belongs to the test's loop
async def alice(running_api: RunningApi) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=running_api.base_url, api_key=running_api.keys["alice"], max_retries=0
    )
    async with client:
        yield client


async def stream_events(
    http: httpx.AsyncClient, api: RunningApi, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every ``data:`` event of a streamed completion, up to and including ``[DONE]``."""
    events: list[dict[str, Any]] = []
    async with http.stream(
        "POST", f"{api.base_url}/chat/completions", json=body, headers=api.headers("alice")
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append({"done": True} if data == "[DONE]" else json.loads(data))
    return events


async def test_models_are_the_collections(alice: openai.AsyncOpenAI) -> None:
    models = await alice.models.list()
    assert [m.id for m in models.data] == [COLLECTION]
    assert (await alice.models.retrieve(COLLECTION)).id == COLLECTION
    with pytest.raises(openai.NotFoundError):
        await alice.models.retrieve("nothing_here")


async def test_a_completion_answers_with_citations(
    alice: openai.AsyncOpenAI, running_api: RunningApi
) -> None:
    completion = await alice.chat.completions.create(
        model=COLLECTION, messages=[{"role": "user", "content": QUESTION}]
    )
    text = completion.choices[0].message.content
    assert text is not None and text.startswith("According to the documents, ")
    assert text.endswith("Tighten the anchor nuts to 40 Nm with a torque wrench [1].")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == COLLECTION
    # The extra field rides along in the SDK's model too.
    sources = (completion.model_extra or {})["sources"]
    assert sources[0]["source"] == "torque.md" and sources[0]["cited"] is True


async def test_a_stream_sends_the_answer_in_pieces(alice: openai.AsyncOpenAI) -> None:
    stream = await alice.chat.completions.create(
        model=COLLECTION, messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
    assert len([p for p in pieces if p]) > 3  # token by token, not one blob
    assert "".join(pieces).endswith("40 Nm with a torque wrench [1].")


async def test_sources_are_in_the_completion_and_the_last_chunk(running_api: RunningApi) -> None:
    body = {"model": COLLECTION, "messages": [{"role": "user", "content": QUESTION}]}
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(
            f"{running_api.base_url}/chat/completions",
            json=body,
            headers=running_api.headers("alice"),
        )
        assert response.status_code == 200, response.text
        completion = response.json()
        events = await stream_events(http, running_api, body | {"stream": True})
    assert completion["object"] == "chat.completion"
    assert completion["cited"] == [1] and completion["answered"] is True
    first = completion["sources"][0]
    assert first["n"] == 1 and first["source"] == "torque.md" and first["name"] == "torque.md"
    assert "40 Nm" in first["text"] and isinstance(first["score"], float)
    assert {s["source"] for s in completion["sources"]} <= {"torque.md", "refunds.md"}

    assert events[-1] == {"done": True}
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["sources"] == completion["sources"]
    assert all("sources" not in e for e in events[:-2])
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert streamed == completion["choices"][0]["message"]["content"]


async def test_a_follow_up_is_condensed_from_the_message_history(
    alice: openai.AsyncOpenAI, running_api: RunningApi
) -> None:
    """The earlier turns reach the condense step; the fake answers its stand-alone form."""
    fake = running_api.fake.fake
    before = len(fake.chat_requests())
    completion = await alice.chat.completions.create(
        model=COLLECTION,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "40 Nm [1]."},
            {"role": "user", "content": "How long do customers have to ask for a refund?"},
        ],
    )
    requests = fake.chat_requests()[before:]
    assert len(requests) == 2  # condense, then answer
    condense = json.dumps(requests[0]["messages"])
    assert "anchor nuts" in condense and "40 Nm [1]." in condense
    assert "You are terse" not in condense  # a caller's system prompt does not reach ours
    assert "refund within 14 days" in (completion.choices[0].message.content or "")


async def test_a_wrong_or_missing_key_is_refused(running_api: RunningApi) -> None:
    for key in ("alice.not-the-right-secret-at-all-000", "garbage", "bob." + "x" * 43):
        client = openai.AsyncOpenAI(base_url=running_api.base_url, api_key=key, max_retries=0)
        async with client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.chat.completions.create(
                    model=COLLECTION, messages=[{"role": "user", "content": QUESTION}]
                )
        assert caught.value.code == "invalid_api_key"
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{running_api.base_url}/models")
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Authorization: Bearer" in error["message"]


async def test_an_unknown_model_is_not_found(alice: openai.AsyncOpenAI) -> None:
    for model in ("no_such_collection", "../etc"):
        with pytest.raises(openai.NotFoundError) as caught:
            await alice.chat.completions.create(
                model=model, messages=[{"role": "user", "content": QUESTION}]
            )
        assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": COLLECTION, "messages": []}, "messages"),
        ({"model": COLLECTION}, "messages"),
        ({"model": COLLECTION, "messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"model": COLLECTION, "messages": [{"role": "user", "content": "x" * 20_000}]}, None),
        ({"model": COLLECTION, "messages": [{"role": "user", "content": "q"}], "k": 0}, "k"),
    ],
)
async def test_a_bad_body_is_a_400_naming_the_field(
    running_api: RunningApi, body: dict[str, Any], param: str | None
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{running_api.base_url}/chat/completions",
            json=body,
            headers=running_api.headers("alice"),
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


async def test_fifty_concurrent_streams_each_get_their_own_answer(
    running_api: RunningApi,
) -> None:
    """Every stream's text names its own ticket number: no stream sees another's tokens."""
    fake = running_api.fake.fake

    def reply(messages: list[dict[str, Any]]) -> str:
        found = re.findall(r"ticket (\d+)", json.dumps(messages))
        return f"Ticket {found[-1]} is handled by the desk in hall {found[-1]} [1]."

    fake.config.chat_reply = reply
    fake.config.chat_token_delay = 0.01  # the streams interleave on the server
    client = openai.AsyncOpenAI(
        base_url=running_api.base_url, api_key=running_api.keys["bob"], max_retries=0
    )

    async def ask(number: int) -> str:
        stream = await client.chat.completions.create(
            model=COLLECTION,
            messages=[{"role": "user", "content": f"Who handles ticket {number}?"}],
            stream=True,
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    try:
        async with client:
            answers = await asyncio.wait_for(asyncio.gather(*(ask(n) for n in range(50))), 240)
    finally:
        fake.config.chat_reply = None
        fake.config.chat_token_delay = 0.0
    assert answers == [f"Ticket {n} is handled by the desk in hall {n} [1]." for n in range(50)]
