"""Wire settings into a ready RagChain: store, embeddings, prompts and chat model.

When no LLM endpoint is configured, the bundled local model is started as a child
process for as long as the chain is open, so `rag ask` works offline with no key.
``open_assistant`` closes everything it opened when its block ends: the chat model's
connection pool, the store's Milvus clients, the embeddings' pools and the local server.

One Assistant answers from any collection on the configured Milvus (the chat's collection
choice, the HTTP API's models): `Assistant.chain_for` opens a store on another collection
once, sharing the chat model and the embeddings, and keeps it until `aclose`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_openai import ChatOpenAI

from rag.answer.policy import answer_policy
from rag.chain import OutsideServices, RagChain
from rag.config import Settings
from rag.embeddings import embedding_service
from rag.errors import CollectionNotFound
from rag.llm import build_chat_model, chat_service, close_chat_model
from rag.local.models import MODELS
from rag.local.server import LocalLLMServer
from rag.prompts import load_prompts
from rag.retrieval import SearchOptions, search_options
from rag.services import Services, close_store, open_collection, open_services, resolve_dimension
from rag.store.milvus import CollectionInfo, list_collections, milvus_service

if TYPE_CHECKING:
    from langchain_milvus import Milvus


@dataclass
class Assistant:
    chain: RagChain
    services: Services
    llm_label: str
    tiny: bool = False  # the bundled 135M model answers: the chat says so under each answer
    llm: ChatOpenAI | None = None  # the chat model, whose connection pool `aclose` closes
    # How a chain is built over another store (set by `build_chain`; same model, prompts).
    make_chain: Callable[[Milvus], RagChain] | None = None
    _chains: dict[str, RagChain] = field(default_factory=dict, repr=False)
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def collection(self) -> str:
        """The configured collection, the one `chain` answers from."""
        return self.chain.store.collection_name

    def default_options(self) -> SearchOptions:
        return search_options(self.services.settings)

    async def collections(self) -> list[CollectionInfo]:
        """Every collection on the configured Milvus with its row count (a blocking scan
        of the server's list, run off the event loop)."""
        return await asyncio.to_thread(list_collections, self.services.settings)

    async def chain_for(self, collection: str | None = None) -> RagChain:
        """The chain answering from ``collection`` (None: the configured one).

        A collection that does not exist raises `CollectionNotFound` instead of being
        created: a chat or an API caller naming a collection must never make an empty
        one. Opening checks it was built by this embedding model (`open_store`), so a
        collection of another model fails here with its one-line reason, not as a search.
        """
        name = collection or self.collection
        if name == self.collection:
            return self.chain
        if (chain := self._chains.get(name)) is not None:
            return chain
        async with self._opening:  # two chats choosing one collection open it once
            if (chain := self._chains.get(name)) is not None:
                return chain
            main = self.services.store
            if self.make_chain is None or not await asyncio.to_thread(
                main.client.has_collection, name
            ):
                raise CollectionNotFound(f"no collection named {name!r} (see `rag collections`)")
            settings = self.services.settings
            dimension = await resolve_dimension(settings, self.services.embeddings)
            store = await open_collection(
                settings, self.services.embeddings, dimension, collection=name
            )
            chain = self._chains[name] = self.make_chain(store)
            return chain

    async def aclose(self) -> None:
        """Close the chat model's connection pool and the stores `chain_for` opened; the
        services belong to whoever opened them (`open_assistant` closes its own, a test
        may share one across chains)."""
        chains, self._chains = self._chains, {}
        try:
            for chain in chains.values():
                await close_store(chain.store)
        finally:
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
    outside = OutsideServices(
        chat_service(settings, base_url), embedding_service(settings), milvus_service(settings)
    )
    policy = answer_policy(settings, bundled=bundled is not None)

    def make_chain(store: Milvus) -> RagChain:
        return RagChain(
            store,
            llm,
            load_prompts(),
            relevance_floor=settings.relevance_floor,
            llm_name=where,
            policy=policy,
            services=outside,
        )

    chain = make_chain(services.store)
    return Assistant(chain, services, describe_model(model, where), tiny, llm, make_chain)


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
