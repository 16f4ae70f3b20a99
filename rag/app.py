"""Wire settings into a ready RagChain: store, embeddings, prompts and chat model.

When no LLM endpoint is configured, the bundled local model is started as a child
process for as long as the chain is open, so `rag ask` works offline with no key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from rag.answer.policy import answer_policy
from rag.chain import RagChain
from rag.config import Settings
from rag.llm import build_chat_model
from rag.local.models import MODELS
from rag.local.server import LocalLLMServer
from rag.prompts import load_prompts
from rag.retrieval import SearchOptions, search_options
from rag.services import Services, open_services


@dataclass
class Assistant:
    chain: RagChain
    services: Services
    llm_label: str
    tiny: bool = False  # the bundled 135M model answers: the chat says so under each answer

    def default_options(self) -> SearchOptions:
        return search_options(self.services.settings)


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
    )
    return Assistant(chain, services, describe_model(model, where), tiny)


@asynccontextmanager
async def open_assistant(
    settings: Settings, *, collection: str | None = None
) -> AsyncIterator[Assistant]:
    """Open everything a question needs; starts (and later stops) the local LLM if needed."""
    load_prompts()  # fail on a broken prompt file before anything slow starts
    server: LocalLLMServer | None = None
    try:
        if settings.llm_base_url:
            base_url, model = settings.llm_base_url, settings.llm_model
            services = await open_services(settings, collection=collection)
        else:
            server = LocalLLMServer(settings.local_llm, port=settings.llm_local_port)
            # Both must finish before we leave, even when one fails: otherwise `finally`
            # would stop a server whose start is still under way, leaving it running.
            opened, started = await asyncio.gather(
                open_services(settings, collection=collection),
                asyncio.to_thread(server.start),
                return_exceptions=True,
            )
            for result in (opened, started):
                if isinstance(result, BaseException):
                    raise result
            services, base_url = opened, started  # type: ignore[assignment]
            model = server.name
        yield build_chain(services, base_url, model)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
