"""Wire settings into a ready RagChain: store, embeddings, prompts and chat model.

When no LLM endpoint is configured, the bundled local model is started as a child
process for as long as the chain is open, so `rag ask` works offline with no key.
``open_assistant`` closes everything it opened when its block ends: the chat model's
connection pool, the store's Milvus clients, the embeddings' pools and the local server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from langchain_openai import ChatOpenAI

from rag.answer.policy import answer_policy
from rag.chain import OutsideServices, RagChain
from rag.config import Settings
from rag.embeddings import embedding_service
from rag.llm import build_chat_model, chat_service, close_chat_model
from rag.local.models import MODELS
from rag.local.server import LocalLLMServer
from rag.prompts import load_prompts
from rag.retrieval import SearchOptions, search_options
from rag.services import Services, open_services
from rag.store.milvus import milvus_service


@dataclass
class Assistant:
    chain: RagChain
    services: Services
    llm_label: str
    tiny: bool = False  # the bundled 135M model answers: the chat says so under each answer
    llm: ChatOpenAI | None = None  # the chat model, whose connection pool `aclose` closes

    def default_options(self) -> SearchOptions:
        return search_options(self.services.settings)

    async def aclose(self) -> None:
        """Close the chat model's connection pool; the services belong to whoever opened
        them (`open_assistant` closes its own, a test may share one across chains)."""
        if self.llm is not None:
            await close_chat_model(self.llm)


def describe_model(model: str, where: str) -> str:
    """What the chat and `rag ask` say answers: a bundled model by its title, and the
    tiny one with a warning, so nobody mistakes its answers for the project's best."""
    bundled = MODELS.get(model)
    if bundled is None:
        return f"{model} at {where}"
    label = f"{bundled.title} (bundled, offline)"
    if bundled.tiny:
        label += " — a tiny model: expect wrong answers; set RAG_LOCAL_LLM or RAG_LLM_BASE_URL"
    return label


def build_chain(services: Services, base_url: str | None, model: str) -> Assistant:
    settings = services.settings.model_copy(update={"llm_model": model})
    bundled = MODELS.get(model)
    tiny = bool(bundled and bundled.tiny)
    llm = build_chat_model(settings, base_url=base_url, bundled=bundled is not None, tiny=tiny)
    where = base_url or "the OpenAI API"
    chain = RagChain(
        services.store,
        llm,
        load_prompts(),
        relevance_floor=settings.relevance_floor,
        llm_name=where,
        policy=answer_policy(settings, bundled=bundled is not None),
        services=OutsideServices(
            chat_service(settings, base_url),
            embedding_service(settings),
            milvus_service(settings),
        ),
    )
    return Assistant(chain, services, describe_model(model, where), tiny, llm)


@asynccontextmanager
async def open_assistant(
    settings: Settings, *, collection: str | None = None
) -> AsyncIterator[Assistant]:
    """Open everything a question needs; starts (and later stops) the local LLM if needed."""
    load_prompts()  # fail on a broken prompt file before anything slow starts
    async with AsyncExitStack() as opened:  # closes in reverse order, even on failure
        if settings.llm_base_url:
            base_url, model = settings.llm_base_url, settings.llm_model
            services = await opened.enter_async_context(
                open_services(settings, collection=collection)
            )
        else:
            server = LocalLLMServer(settings.local_llm, port=settings.llm_local_port)
            opened.push_async_callback(asyncio.to_thread, server.stop)  # safe if not started
            # Both must finish before we leave, even when one fails: otherwise the server
            # would be stopped while its start is still under way, leaving it running.
            services_or_error, started = await asyncio.gather(
                open_services(settings, collection=collection),
                asyncio.to_thread(server.start),
                return_exceptions=True,
            )
            if isinstance(services_or_error, Services):
                opened.push_async_callback(services_or_error.aclose)
            for result in (services_or_error, started):
                if isinstance(result, BaseException):
                    raise result
            services, base_url = services_or_error, started  # type: ignore[assignment]
            model = server.name
        assistant = build_chain(services, base_url, model)
        opened.push_async_callback(assistant.aclose)
        yield assistant
