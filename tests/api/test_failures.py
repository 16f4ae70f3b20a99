"""Outside failures reach an API client as OpenAI reports them, so its retries do the right
thing: Milvus down → 503, the model endpoint down → 502, rate-limited upstream → 429 with
the upstream's Retry-After, and a failure after text was streamed → an error event and
``[DONE]``. Each test breaks its own server (``own_api``), never the module's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from milvus_lite.server_manager import server_manager_instance

from tests.api.conftest import COLLECTION, RunningApi

QUESTION = {"model": COLLECTION, "messages": [{"role": "user", "content": "Anchor nut torque?"}]}


async def post(api: RunningApi, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.post(f"{api.base_url}{path}", json=body, headers=api.headers("alice"))


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize("stream", [False, True])
async def test_milvus_down_is_503(own_api: RunningApi, stream: bool) -> None:
    server_manager_instance.release_server(own_api.settings.milvus_uri)  # the Lite server stops
    response = await post(own_api, "/chat/completions", QUESTION | {"stream": stream})
    assert response.status_code == 503, response.text
    error = error_of(response)
    assert error["code"] == "store_unavailable" and "Milvus" in error["message"]
    search = await post(own_api, "/search", {"query": "anchor nuts"})
    assert search.status_code == 503, search.text


@pytest.mark.parametrize("stream", [False, True])
async def test_the_model_endpoint_down_is_502(own_api: RunningApi, stream: bool) -> None:
    own_api.fake.fake.fail_next("chat", 503, count=3)  # the first try and both retries
    response = await post(own_api, "/chat/completions", QUESTION | {"stream": stream})
    assert response.status_code == 502, response.text
    error = error_of(response)
    assert error["code"] == "model_unavailable" and "chat model" in error["message"]
    assert not own_api.fake.fake.config.faults["chat"]  # all three tries were made


async def test_an_upstream_rate_limit_is_429_with_its_retry_after(own_api: RunningApi) -> None:
    own_api.fake.fake.fail_next("chat", 429, count=3, retry_after=0.1)
    response = await post(own_api, "/chat/completions", QUESTION)
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "0.1"
    assert error_of(response)["code"] == "rate_limit_exceeded"
    # The SDK sees its own RateLimitError, and would retry on its own (max_retries=0 here).
    client = openai.AsyncOpenAI(
        base_url=own_api.base_url, api_key=own_api.keys["alice"], max_retries=0
    )
    own_api.fake.fake.fail_next("chat", 429, count=3, retry_after=0.1)
    async with client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**QUESTION)


async def test_a_stream_cut_after_text_ends_with_an_error_event(own_api: RunningApi) -> None:
    """The status line has gone out: the stream says what happened, then [DONE]."""
    own_api.fake.fake.drop_stream_after(4)  # the role chunk and three words, then cut
    events: list[Any] = []
    async with (
        httpx.AsyncClient(timeout=120) as http,
        http.stream(
            "POST",
            f"{own_api.base_url}/chat/completions",
            json=QUESTION | {"stream": True},
            headers=own_api.headers("alice"),
        ) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "model_unavailable" and "cut off" in error["message"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text == "According to the "
    # The SDK raises on the error event instead of returning a short answer.
    own_api.fake.fake.drop_stream_after(4)
    client = openai.AsyncOpenAI(
        base_url=own_api.base_url, api_key=own_api.keys["alice"], max_retries=0
    )
    async with client:
        stream = await client.chat.completions.create(**QUESTION, stream=True)
        with pytest.raises(openai.APIError, match="cut off"):
            async for _ in stream:
                pass


async def test_an_upload_when_milvus_is_down_is_503(own_api: RunningApi) -> None:
    """An upload that failed outside (not a bad file) is retryable, as a question is; the
    one mapping of failures (`rag.api.errors.from_rag_error`) serves both."""
    server_manager_instance.release_server(own_api.settings.milvus_uri)  # the Lite server stops
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.post(
            f"{own_api.base_url}/documents",
            files={"file": ("heron.txt", b"The heron code is HX-77.", "text/plain")},
            headers=own_api.headers("alice"),
        )
    assert response.status_code == 503, response.text
    assert error_of(response)["code"] == "store_unavailable"
