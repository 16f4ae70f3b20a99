"""The `rag` command: a thin typer layer over the Python API in `rag/` and `ingest/`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rag.errors import RagError, SourceNotFound
from rag.settings import SQLITE_PREFIX, Settings, load_settings

app = typer.Typer(
    help="Ask questions about your documents: ingest a folder into Milvus, then chat with it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")


class Mode(StrEnum):
    dense = "dense"
    bm25 = "bm25"
    hybrid = "hybrid"


ModeOption = Annotated[
    Mode | None,
    typer.Option("--mode", "-m", help="dense, bm25 or hybrid (default: RAG_SEARCH_MODE)."),
]

CollectionOption = Annotated[
    str | None,
    typer.Option("--collection", "-c", help="Collection to use (default: RAG_COLLECTION)."),
]


def fail(error: RagError) -> typer.Exit:
    """Print a user-facing error as one line (escaped: messages hold paths like a[1].md)."""
    errors.print(f"[bold red]error[/]: {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(error.exit_code)


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning user-facing errors into one line and an exit code."""
    try:
        return asyncio.run(make())
    except RagError as error:
        raise fail(error) from None
    except KeyboardInterrupt:
        errors.print("interrupted: nothing is lost; run the same command again to finish")
        raise typer.Exit(130) from None


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except RagError as error:
        raise fail(error) from None


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # langchain-milvus logs a full error before raising; we report it in one line.
        logging.getLogger("langchain_milvus").setLevel(logging.CRITICAL)
        # Milvus Lite's in-process gRPC server logs a traceback for a timestamp call it
        # does not implement; pymilvus falls back by itself, so it is noise to a user.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder (or single file) to ingest.")],
    collection: CollectionOption = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", "-i", help="Glob of files to take.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", "-x", help="Glob of files to skip.")
    ] = None,
    keep_missing: Annotated[
        bool, typer.Option(help="Keep chunks of files no longer in the folder.")
    ] = False,
    recreate: Annotated[
        bool, typer.Option(help="Drop the collection first and rebuild it from scratch.")
    ] = False,
) -> None:
    """Load, split, embed and write a folder of documents; re-runs write only what changed."""
    from ingest.pipeline import ingest_path
    from ingest.progress import ConsoleReporter, summary_table
    from rag.services import open_services

    settings = settings_or_exit(collection=collection)
    if not path.expanduser().exists():
        raise fail(SourceNotFound(f"no such file or folder: {path}"))

    async def go() -> bool:
        services = await open_services(settings, recreate=recreate)
        with ConsoleReporter(console) as reporter:
            report = await ingest_path(
                path,
                services.store,
                settings,
                reporter,
                include=include or (),
                exclude=exclude or (),
                keep_missing=keep_missing,
            )
        console.print(summary_table(report))
        return report.ok

    if not run_async(go):
        errors.print("[bold red]some files failed[/] (listed above); the others were ingested")
        raise typer.Exit(1)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=100, help="How many hits.")] = 4,
    mode: ModeOption = None,
    collection: CollectionOption = None,
) -> None:
    """Show the passages closest to a query (retrieval only, no LLM)."""
    from dataclasses import replace

    from rag.retrieval import retrieve, search_options
    from rag.services import open_services

    settings = settings_or_exit(collection=collection)

    async def go() -> None:
        services = await open_services(settings)
        options = replace(search_options(settings), k=k, mmr=False)
        if mode is not None:
            options = replace(options, mode=mode.value)
        note_fallback(services.store, options.mode)
        hits = await retrieve(services.store, query, options)
        table = Table(title=Text(f"Top {k} for: {query}"), show_lines=True)
        for column in ("#", "score", "source", "page", "passage"):
            table.add_column(column)
        for number, hit in enumerate(hits, 1):
            table.add_row(
                str(number),
                f"{hit.score:.3f}",
                Text(hit.source),
                str(hit.page or ""),
                Text(hit.document.page_content[:300]),
            )
        console.print(table)

    run_async(go)


def note_fallback(store: object, mode: str) -> None:
    """Say on stderr when BM25/hybrid was asked for but this Milvus can only do dense."""
    reason = getattr(store, "bm25_unavailable", None)
    if mode != "dense" and reason:
        errors.print(
            f"[yellow]note[/]: {mode} search is unavailable ({escape(reason)}); using dense search",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="Your question about the documents.")],
    k: Annotated[int | None, typer.Option("--k", "-k", min=1, max=50, help="Passages.")] = None,
    mmr: Annotated[
        bool | None, typer.Option("--mmr/--no-mmr", help="Diversify passages (MMR).")
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only search these files.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mode: ModeOption = None,
    collection: CollectionOption = None,
) -> None:
    """Answer a question from the documents, streaming the answer, then list its sources."""
    import json
    from dataclasses import replace

    from rag.assistant import open_assistant
    from rag.chain import Answer, AnswerInterrupted, Token

    settings = settings_or_exit(collection=collection)

    async def go() -> Answer:
        async with open_assistant(settings) as assistant:
            options = replace(
                assistant.default_options(),
                **{"k": k} if k else {},
                **{"mmr": mmr} if mmr is not None else {},
                **{"mode": mode.value} if mode is not None else {},
                sources=tuple(source or ()),
            )
            note_fallback(assistant.services.store, options.mode)
            answer: Answer | None = None
            try:
                async for event in assistant.chain.astream(question, options=options):
                    if isinstance(event, Token) and not as_json:
                        console.print(event.text, end="", highlight=False, markup=False)
                    elif isinstance(event, Answer):
                        answer = event
            except AnswerInterrupted:
                console.print()
                raise
            assert answer is not None
            return answer

    answer = run_async(go)
    if as_json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return
    console.print("\n")
    table = Table(
        title="Sources" if answer.answered else "Closest passages (below the relevance floor)"
    )
    for column in ("#", "source", "page", "score", "cited"):
        table.add_column(column)
    for number, hit in enumerate(answer.hits, 1):
        table.add_row(
            f"[{number}]",
            Text(hit.source),
            str(hit.page or ""),
            f"{hit.score:.3f}",
            "yes" if number in answer.cited else "",
        )
    console.print(table)


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the chat UI.")] = 8000,
    collection: CollectionOption = None,
) -> None:
    """Start the chat UI (and the bundled local model when no LLM endpoint is configured)."""
    import os
    import subprocess

    from rag.local_llm import LocalLLMServer
    from rag.welcome import PROJECT_ROOT, prepare_app_root

    settings = settings_or_exit(collection=collection)
    env = dict(os.environ) | settings.to_env()
    # Chainlit runs from the app root (where chainlit.md is): pin relative paths first.
    if settings.milvus_is_local:
        env["RAG_MILVUS_URI"] = str(settings.milvus_path.resolve())
    if (db_path := settings.database_path) is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        env["RAG_DATABASE_URL"] = f"{SQLITE_PREFIX}{db_path.resolve()}"
    env["RAG_UPLOAD_DIR"] = str(Path(settings.upload_dir).resolve())
    app_root = prepare_app_root(Path(settings.ui_dir))
    env["CHAINLIT_APP_ROOT"] = str(app_root)
    server: LocalLLMServer | None = None
    try:
        if not settings.llm_base_url:
            server = LocalLLMServer(settings.local_llm, port=settings.llm_local_port)
            console.print(f"starting the bundled chat model {server.model.title}…")
            try:
                env["RAG_LLM_BASE_URL"] = server.start()
            except RagError as error:
                raise fail(error) from None
            env["RAG_LLM_MODEL"] = server.name
        console.print(f"[bold green]chat UI:[/] http://{host}:{port}", highlight=False)
        target = str(PROJECT_ROOT / "rag" / "chat_app.py")
        command = [sys.executable, "-m", "chainlit", "run", target,
                   "--headless", "--host", host, "--port", str(port)]  # fmt: skip
        raise typer.Exit(subprocess.call(command, env=env, cwd=env["CHAINLIT_APP_ROOT"]))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    finally:
        if server is not None:
            server.stop()


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Small sizes: a few minutes on 2 cores.")] = False,
) -> None:
    """Run the benchmarks in bench/ side by side and write bench/results/."""
    import subprocess

    from rag.welcome import PROJECT_ROOT

    if not (PROJECT_ROOT / "bench").is_dir():
        errors.print("[bold red]error[/]: bench/ is only in a source checkout of the project")
        raise typer.Exit(2)
    command = [sys.executable, "-m", "bench", *(["--quick"] if quick else [])]
    raise typer.Exit(subprocess.call(command, cwd=PROJECT_ROOT))


@app.command()
def doctor(collection: CollectionOption = None) -> None:
    """Print the effective configuration (secrets masked) and check each service answers."""
    from rag.doctor import run_checks

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


# Commands that live in their own modules register themselves on `app` when imported.
from rag.commands import collections, evaluate, feedback  # noqa: E402, F401
