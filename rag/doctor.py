"""Checks behind `rag doctor`: is each configured service there and usable?"""

from __future__ import annotations

import asyncio

from rag.embeddings import build_embeddings, embedding_identity
from rag.errors import RagError
from rag.services import resolve_dimension
from rag.settings import Settings
from rag.store import connect, describe_failure, read_identity

Check = tuple[str, bool, str]


def _milvus(settings: Settings) -> Check:
    """Blocking: connect, and report the collection's identity and row count."""
    try:
        client = connect(settings)
        try:
            if not client.has_collection(settings.collection):
                return (
                    "milvus",
                    True,
                    f"reachable; collection {settings.collection!r} not yet created",
                )
            identity = read_identity(client, settings.collection)
            stats = client.get_collection_stats(settings.collection)
            built = (
                f"{identity.embedding_model}, {identity.dimension} dims" if identity else "foreign"
            )
            return (
                "milvus",
                True,
                f"collection {settings.collection!r}: {stats.get('row_count', '?')} rows ({built})",
            )
        finally:
            client.close()
    except RagError as error:
        return ("milvus", False, str(error))
    except Exception as error:
        return ("milvus", False, describe_failure(settings, error))


async def _embeddings(settings: Settings) -> Check:
    try:
        embeddings = build_embeddings(settings)
        dimension = await resolve_dimension(settings, embeddings)
        await embeddings.aembed_query("doctor")
        return ("embeddings", True, f"{embedding_identity(settings)[0]} ({dimension} dims)")
    except RagError as error:
        return ("embeddings", False, str(error))
    except Exception as error:
        return ("embeddings", False, f"{type(error).__name__}: {str(error).splitlines()[0]}")


async def run_checks(settings: Settings) -> list[Check]:
    milvus, embeddings = await asyncio.gather(
        asyncio.to_thread(_milvus, settings), _embeddings(settings)
    )
    return [milvus, embeddings]
