"""`rag search` and `rag ask`: retrieval alone, and answers streamed to the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rag.cli.app import (
    CollectionOption,
    MmrOption,
    ModeOption,
    ViewerOption,
    app,
    console,
    errors,
    run_async,
    settings_or_exit,
)
from rag.store.schema import SHARED


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=100, help="How many hits.")] = 4,
    mode: ModeOption = None,
    collection: CollectionOption = None,
    viewer: ViewerOption = None,
) -> None:
    """Show the passages closest to a query (retrieval only, no LLM)."""
    from dataclasses import replace

    from rag.retrieval import retrieve, search_options
    from rag.services import open_services

    settings = settings_or_exit(collection=collection)

    async def go() -> None:
        async with open_services(settings) as services:
            options = replace(search_options(settings), k=k, mmr=False, viewer=viewer or SHARED)
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
    mmr: MmrOption = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only search these files.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    mode: ModeOption = None,
    collection: CollectionOption = None,
    viewer: ViewerOption = None,
) -> None:
    """Answer a question from the documents, streaming the answer, then list its sources."""
    import json
    from dataclasses import replace

    from rag.app import open_assistant
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
                viewer=viewer or SHARED,
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
