"""The chat model: any OpenAI-compatible endpoint through langchain-openai's ChatOpenAI."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    return ChatOpenAI(
        # Its own connection pool, closed with the model (`close_chat_model`): without one,
        # langchain-openai hands every ChatOpenAI for the same URL and timeout one cached,
        # process-wide pool (chat_models/_client_utils.py, 1.7), which nobody may close.
        # The SDK's DefaultAsyncHttpxClient keeps the SDK's limits and redirects.
        http_async_client=openai.DefaultAsyncHttpxClient(),
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


async def close_chat_model(llm: ChatOpenAI) -> None:
    """Close the connection pool `build_chat_model` gave the model (safe to call twice)."""
    if llm.http_async_client is not None:
        await llm.http_async_client.aclose()
