"""Build the embeddings and the store from settings, off the event loop.

Shared by the CLI, the chat UI and the tests so there is one way to open things.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.embeddings import LocalMiniLMEmbeddings, build_embeddings, embedding_identity
from rag.errors import ModelUnavailable
from rag.store.milvus import open_store

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_milvus import Milvus

    from rag.config import Settings


@dataclass
class Services:
    settings: Settings
    embeddings: Embeddings
    store: Milvus


async def resolve_dimension(settings: Settings, embeddings: Embeddings) -> int:
    """The vector size: known for the local model, configured or probed for an endpoint."""
    known = embedding_identity(settings)[1]
    if known is not None:
        return known
    try:
        return len(await embeddings.aembed_query("dimension probe"))
    except Exception as error:
        where = settings.embedding_base_url or "the OpenAI API"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelUnavailable(f"embedding endpoint {where} is not answering: {first}") from error


async def open_services(
    settings: Settings, *, collection: str | None = None, recreate: bool = False
) -> Services:
    """Load the embedding model and open (creating if needed) the collection."""
    embeddings = build_embeddings(settings)
    if isinstance(embeddings, LocalMiniLMEmbeddings):
        await asyncio.to_thread(embeddings.load)
    dimension = await resolve_dimension(settings, embeddings)
    store = await asyncio.to_thread(
        open_store,
        settings,
        embeddings,
        dimension,
        embedding_model=embedding_identity(settings)[0],
        collection=collection,
        recreate=recreate,
    )
    return Services(settings, embeddings, store)
