"""`rag doctor`: is each configured service there and usable?"""

from __future__ import annotations

import asyncio

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rag.cli.app import CollectionOption, app, console, run_async, settings_or_exit
from rag.config import Settings
from rag.embeddings import build_embeddings, close_embeddings, embedding_identity, embedding_service
from rag.errors import RagError, explain, mask_url_password
from rag.llm import chat_service
from rag.services import resolve_dimension
from rag.store.milvus import connect, milvus_service, read_identity

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
    except Exception as error:  # a RagError comes back from explain as it is
        return ("milvus", False, str(explain(error, milvus_service(settings))))


async def _embeddings(settings: Settings) -> Check:
    try:
        embeddings = build_embeddings(settings)
    except RagError as error:
        return ("embeddings", False, str(error))
    try:
        dimension = await resolve_dimension(settings, embeddings)
        await embeddings.aembed_query("doctor")
        return ("embeddings", True, f"{embedding_identity(settings)[0]} ({dimension} dims)")
    except Exception as error:
        return ("embeddings", False, str(explain(error, embedding_service(settings))))
    finally:
        await close_embeddings(embeddings)


def _llm(settings: Settings) -> Check:
    """Blocking: the endpoint lists its models, or the bundled model is installed."""
    import importlib.util

    import openai

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
    # The SDK the answers use, so its errors (a rejected key, nobody listening) read here
    # as they do in `rag ask`; no retries: the doctor reports, it does not insist.
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "not-needed"
    try:
        with openai.OpenAI(
            base_url=settings.llm_base_url, api_key=key, timeout=10, max_retries=0
        ) as client:
            names = [model.id for model in client.models.list()]
    except Exception as error:
        return ("chat model", False, str(explain(error, chat_service(settings))))
    listed = "listed" if settings.llm_model in names else "not in its model list"
    where = mask_url_password(settings.llm_base_url)
    return ("chat model", True, f"{settings.llm_model} at {where} ({listed})")


async def _history(settings: Settings) -> Check:
    """The chat history database answers (a SQLite file not made yet is fine)."""
    from sqlalchemy import text

    from rag.history_schema import history_service, make_engine

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
        return ("chat history", False, str(explain(error, history_service(url))))
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
