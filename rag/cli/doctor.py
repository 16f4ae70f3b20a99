"""`rag doctor`: is each configured service there and usable?"""

from __future__ import annotations

import asyncio

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rag.cli.app import CollectionOption, app, console, run_async, settings_or_exit
from rag.config import Settings
from rag.embeddings import build_embeddings, embedding_identity
from rag.errors import RagError
from rag.services import resolve_dimension
from rag.store.milvus import connect, describe_failure, read_identity

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


def _llm(settings: Settings) -> Check:
    """Blocking: the endpoint lists its models, or the bundled model is installed."""
    import importlib.util
    import json
    import urllib.error
    import urllib.request

    from rag.local.models import get_model, model_path
    from rag.local.server import INSTALL_HINT

    if not settings.llm_base_url:
        try:
            path = model_path(settings.local_llm)
        except RagError as error:
            return ("chat model", False, str(error))
        if importlib.util.find_spec("llama_cpp") is None:
            return ("chat model", False, f"llama-cpp-python is not installed; {INSTALL_HINT}")
        title = get_model(settings.local_llm).title
        return ("chat model", True, f"bundled {title} ({path.name}), started on demand")
    request = urllib.request.Request(f"{settings.llm_base_url}/models")
    if settings.llm_api_key is not None:
        request.add_header("Authorization", f"Bearer {settings.llm_api_key.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            names = [m.get("id") for m in json.load(reply).get("data", [])]
    except urllib.error.HTTPError as error:
        return ("chat model", False, f"{settings.llm_base_url} answered HTTP {error.code}")
    except (urllib.error.URLError, OSError, ValueError) as error:
        return ("chat model", False, f"{settings.llm_base_url} is not reachable: {error}")
    listed = "listed" if settings.llm_model in names else "not in its model list"
    return ("chat model", True, f"{settings.llm_model} at {settings.llm_base_url} ({listed})")


async def _history(settings: Settings) -> Check:
    """The chat history database answers (a SQLite file not made yet is fine)."""
    from sqlalchemy import text

    from rag.errors import mask_url_password
    from rag.history import describe, make_engine

    url = settings.database_url
    if not url:
        return ("chat history", True, "off (RAG_DATABASE_URL is empty)")
    shown = mask_url_password(url)
    path = settings.database_path
    if path is not None and not await asyncio.to_thread(path.exists):
        return ("chat history", True, f"{shown} (created at the first `rag ui`)")
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return ("chat history", True, shown)
    except Exception as error:
        return ("chat history", False, describe(url, error))
    finally:
        await engine.dispose()


async def run_checks(settings: Settings) -> list[Check]:
    milvus, embeddings, llm, history = await asyncio.gather(
        asyncio.to_thread(_milvus, settings),
        _embeddings(settings),
        asyncio.to_thread(_llm, settings),
        _history(settings),
    )
    return [milvus, embeddings, llm, history]


@app.command()
def doctor(collection: CollectionOption = None) -> None:
    """Print the effective configuration (secrets masked) and check each service answers."""
    settings = settings_or_exit(collection=collection)
    table = Table(title="Configuration", show_header=False)
    for name, value in settings.public_view().items():
        table.add_row(f"RAG_{name.upper()}", Text(str(value)))
    console.print(table)
    results = run_async(lambda: run_checks(settings))
    failed = False
    for name, ok, detail in results:
        mark = "[green]ok[/]" if ok else "[bold red]FAIL[/]"
        console.print(f"{mark}  {name}: {escape(detail)}", highlight=False, soft_wrap=True)
        failed |= not ok
    if failed:
        raise typer.Exit(1)
