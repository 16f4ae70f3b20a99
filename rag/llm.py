"""The chat model: any OpenAI-compatible endpoint through langchain-openai's ChatOpenAI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
from langchain_openai import ChatOpenAI

from rag.errors import Service

if TYPE_CHECKING:
    from rag.config import Settings


BUNDLED_MAX_TOKENS = 200  # one or two cited sentences; a CPU writes ~20 tokens/s


def chat_service(settings: Settings, base_url: str | None = None) -> Service:
    """The chat endpoint (``base_url``: the bundled one) as failures name it."""
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
    where = base_url or settings.llm_base_url or "the OpenAI API"
    return Service("chat", f"the chat model at {where}", "RAG_LLM_API_KEY", (key,))


# What the SDK's ``chat.completions.create`` takes beside the JSON body, and where its
# low-level ``post`` wants each (openai 3, resources/chat/completions/completions.py).
_REQUEST_OPTIONS = {"extra_body": "extra_json", "extra_headers": "headers",
                    "extra_query": "params", "timeout": "timeout"}  # fmt: skip


class StreamedChatDicts:
    """ChatOpenAI's ``async_client`` for streamed answers: the endpoint's chunks as the
    JSON objects they arrive as, through the SDK's own ``AsyncOpenAI.post``.

    Why: at 50 concurrent chats the CPU of this process is what they wait for (one GIL),
    and most of it went to the SDK building typed objects nobody reads: it walks the
    request's TypedDict annotations (every member of the message union, ~1 ms a request)
    and constructs a pydantic ``ChatCompletionChunk`` for every token, which
    langchain-openai at once turns back into a dict (``chunk.model_dump()`` in
    ``BaseChatOpenAI._astream``, 1.7). langchain-openai takes a dict chunk as it is, and
    ``post`` with ``cast_to=object`` hands the decoded JSON through (``_process_response_data``),
    while keeping everything else of the SDK: the Authorization header, retries with
    Retry-After, timeouts, the status errors (``openai.APIStatusError`` and kin) and an
    error event in the stream. ``bench/chat_cpu.py`` measures the difference.

    Anything else (a non-streamed call, ``with_raw_response``) goes to the typed client.
    """

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client
        self._typed = client.chat.completions

    async def create(self, **payload: Any) -> Any:
        if not payload.get("stream"):
            return await self._typed.create(**payload)
        options: openai.RequestOptions = {}
        for argument, option in _REQUEST_OPTIONS.items():
            if argument in payload:
                options[option] = payload.pop(argument)  # type: ignore[literal-required]
        return await self._client.post(
            "/chat/completions",
            body=payload,
            options=options,
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._typed, name)


def build_chat_model(
    settings: Settings,
    base_url: str | None = None,
    *,
    bundled: bool = False,
    tiny: bool = False,
) -> ChatOpenAI:
    """A streaming ChatOpenAI for the configured endpoint (or ``base_url``, e.g. the local one).

    Retries stay low: the openai client already honours Retry-After on 429s, and a
    person waiting in the chat is better served by a clear error than by a minute
    of silent retries. ``bundled`` models run on this machine's CPU, so their answers are
    capped (a rambling answer holds up every chat queued behind it); ``tiny`` is for the
    135M model, which loops on its own words unless penalised for repeating them.
    """
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "not-needed"
    cap = min(settings.llm_max_tokens, 160 if tiny else BUNDLED_MAX_TOKENS)
    local = bundled or tiny
    # langchain-openai sends max_completion_tokens, which llama.cpp's server ignores.
    extra = {"max_tokens": cap, **({"repeat_penalty": 1.3} if tiny else {})} if local else None
    llm = ChatOpenAI(
        # Its own connection pool, closed with the model (`close_chat_model`): without one,
        # langchain-openai hands every ChatOpenAI for the same URL and timeout one cached,
        # process-wide pool (chat_models/_client_utils.py, 1.7), which nobody may close.
        # The SDK's DefaultAioHttpClient keeps the SDK's limits and redirects, on aiohttp
        # (the `openai[aiohttp]` extra) instead of httpcore: at 50 concurrent streams
        # httpcore's pool re-checks every connection for each request and reads each
        # token through several layers (a cProfile of 50 chats at once: a quarter less
        # CPU per streamed answer on aiohttp, StreamedChatDicts used in both; the two
        # together against the SDK's defaults: bench/chat_cpu.py). `rag.errors` reads
        # aiohttp's errors.
        http_async_client=openai.DefaultAioHttpClient(),
        model=settings.llm_model,
        base_url=base_url or settings.llm_base_url,
        api_key=key,  # type: ignore[arg-type]
        temperature=settings.llm_temperature,
        max_tokens=cap if local else settings.llm_max_tokens,  # type: ignore[call-arg]
        frequency_penalty=0.8 if tiny else None,
        extra_body=extra,
        timeout=settings.llm_timeout,
        max_retries=2,
        streaming=True,
    )
    llm.async_client = StreamedChatDicts(llm.root_async_client)
    return llm


async def close_chat_model(llm: ChatOpenAI) -> None:
    """Close the connection pool `build_chat_model` gave the model (safe to call twice)."""
    if llm.http_async_client is not None:
        await llm.http_async_client.aclose()
