"""Build the embeddings and the store from settings, off the event loop, and close them.

Shared by the CLI, the chat UI and the tests so there is one way to open things::

    async with open_services(settings) as services:   # closed at the end of the block
        ...
    services = await open_services(settings)          # the caller closes: services.aclose()
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.embeddings import (
    LocalMiniLMEmbeddings,
    build_embeddings,
    close_embeddings,
    embedding_identity,
    embedding_service,
)
from rag.errors import explain
from rag.store.milvus import RagMilvus, open_store

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_milvus import Milvus

    from rag.config import Settings


async def close_store(store: Milvus) -> None:
    """Close both Milvus clients of a langchain-milvus store; safe to call twice.

    langchain-milvus 0.4 opens a MilvusClient and an AsyncMilvusClient for every store
    (vectorstores/milvus.py, ``__init__``) and never closes them; ``client`` and ``aclient``
    are its handles on them. In pymilvus 3 ``MilvusClient.close()`` gives its connection
    back to the shared registry (a no-op once done), and ``AsyncMilvusClient.close()``
    marks the client closed, so a later call raises instead of quietly reconnecting.
    """
    store.client.close()
    await store.aclient.close()


@dataclass
class Services:
    """The opened embeddings and store; ``aclose()`` (or ``async with``) closes them."""

    settings: Settings
    embeddings: Embeddings
    store: Milvus

    async def aclose(self) -> None:
        """Close the store's Milvus clients and the embeddings' HTTP pools."""
        try:
            await close_store(self.store)
        finally:
            await close_embeddings(self.embeddings)

    async def __aenter__(self) -> Services:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def resolve_dimension(settings: Settings, embeddings: Embeddings) -> int:
    """The vector size: known for the local model, configured or probed for an endpoint."""
    known = embedding_identity(settings)[1]
    if known is not None:
        return known
    try:
        return len(await embeddings.aembed_query("dimension probe"))
    except Exception as error:
        raise explain(error, embedding_service(settings)) from error


async def open_collection(
    settings: Settings,
    embeddings: Embeddings,
    dimension: int,
    *,
    collection: str | None = None,
    recreate: bool = False,
) -> RagMilvus:
    """The store on the configured collection, built off the event loop (its constructor
    uses the sync client), recorded as made by the configured embedding model."""
    return await asyncio.to_thread(
        open_store,
        settings,
        embeddings,
        dimension,
        embedding_model=embedding_identity(settings)[0],
        collection=collection,
        recreate=recreate,
    )


async def _open(settings: Settings, collection: str | None, recreate: bool) -> Services:
    embeddings = build_embeddings(settings)
    try:
        if isinstance(embeddings, LocalMiniLMEmbeddings):
            await asyncio.to_thread(embeddings.load)
        dimension = await resolve_dimension(settings, embeddings)
        store = await open_collection(
            settings, embeddings, dimension, collection=collection, recreate=recreate
        )
    except BaseException:
        await close_embeddings(embeddings)  # nothing else was opened
        raise
    return Services(settings, embeddings, store)


class OpeningServices(Coroutine[Any, Any, Services]):
    """What `open_services` returns: awaited (or run by ``asyncio.run``), the open Services
    (the caller closes them); used with ``async with``, Services closed when the block ends.

    Both shapes exist because the CLI and the UI want the block, while tests and bench
    scripts keep one Services open for a whole session. It is a Coroutine (the ABC,
    delegating to the real one), so ``asyncio.run(open_services(...))`` keeps working.
    """

    def __init__(self, settings: Settings, collection: str | None, recreate: bool) -> None:
        self._arguments = (settings, collection, recreate)
        self._opening: Coroutine[Any, Any, Services] | None = None
        self._services: Services | None = None

    def _coroutine(self) -> Coroutine[Any, Any, Services]:
        # Made on first use, not in __init__: an OpeningServices that is never used must
        # not leave a "coroutine was never awaited" warning behind.
        if self._opening is None:
            self._opening = _open(*self._arguments)
        return self._opening

    def __await__(self) -> Generator[Any, None, Services]:
        return self._coroutine().__await__()

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *error: Any) -> Any:
        return self._coroutine().throw(*error)

    def close(self) -> None:
        if self._opening is not None:
            self._opening.close()

    async def __aenter__(self) -> Services:
        self._services = await self._coroutine()
        return self._services

    async def __aexit__(self, *exc_info: object) -> None:
        services, self._services = self._services, None
        if services is not None:
            await services.aclose()


def open_services(
    settings: Settings, *, collection: str | None = None, recreate: bool = False
) -> OpeningServices:
    """Load the embedding model and open (creating if needed) the collection."""
    return OpeningServices(settings, collection, recreate)
