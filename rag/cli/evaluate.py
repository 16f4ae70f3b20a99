"""`rag eval DATASET`: answer quality of the current collection as numbers.

The logic lives in ``rag.eval`` (usable from Python and by ``bench/quality.py``): the
question format in ``rag.eval.dataset``, the runs in ``rag.eval.run``, the tables and files
in ``rag.eval.report``; this module only parses options, prints the tables and writes the
reports.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from rag.choices import EVAL_MODES
from rag.cli.app import CollectionOption, MmrOption, app, console, fail, run_async, settings_or_exit
from rag.errors import RagError

EvalMode = StrEnum("EvalMode", {mode: mode for mode in EVAL_MODES})


@app.command("eval")
def evaluate(
    dataset: Annotated[
        Path, typer.Argument(help="JSONL question file (format: `rag.eval.dataset` docstring).")
    ],
    mode: Annotated[
        list[EvalMode] | None,
        typer.Option(
            "--mode",
            "-m",
            help="Search mode; repeat to compare several (default: RAG_SEARCH_MODE).",
        ),
    ] = None,
    k: Annotated[
        list[int] | None,
        typer.Option("--k", "-k", min=1, max=50, help="Passages for the model; repeat to compare."),
    ] = None,
    mmr: MmrOption = None,
    answers: Annotated[
        bool,
        typer.Option(
            "--answers",
            help="Also ask the chat model (RAG_LLM_*, or the bundled local model) and "
            "check citations, gold answers and refusals.",
        ),
    ] = False,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Only questions with this tag.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Only the first N questions.")
    ] = None,
    every: Annotated[
        int,
        typer.Option("--every", min=1, help="Only every Nth question: a spread-out sample."),
    ] = 1,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for eval_<dataset>.json and eval_<dataset>.md."),
    ] = Path("bench/results"),
    collection: CollectionOption = None,
) -> None:
    """Score retrieval (recall@k, MRR, nDCG, refusals) and optionally answers on a gold set."""
    from rag.eval.configs import config_from_mode
    from rag.eval.dataset import DatasetError, load_dataset, subset
    from rag.eval.metrics import Summary
    from rag.eval.report import headline, tag_table, write_reports
    from rag.eval.run import evaluate_answers, evaluate_retrieval, require_documents

    settings = settings_or_exit(collection=collection)
    try:
        gold = subset(load_dataset(dataset), limit, tag or (), every)
    except DatasetError as error:
        raise fail(error) from None
    modes = [m.value for m in mode] if mode else [settings.search_mode]
    configs = [
        config_from_mode(m, size, settings.mmr if mmr is None else mmr, settings)
        for m, size in itertools.product(modes, k or [settings.top_k])
    ]

    def progress(name: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            console.print(f"  {name}: {done}/{total}", highlight=False)

    answered_by: dict[str, str] = {}  # which model and answer policy the answers came from

    async def go() -> list[Summary]:
        if answers:
            from rag.app import open_assistant

            async with open_assistant(settings) as assistant:
                await require_documents(assistant.services.store)
                console.print(f"answers from {assistant.llm_label}", highlight=False)
                answered_by["llm"] = assistant.llm_label
                answered_by["answers"] = assistant.chain.policy.summary()
                return [
                    await evaluate_answers(assistant.chain, gold, config, progress)
                    for config in configs
                ]
        from rag.services import open_services

        services = await open_services(settings)
        await require_documents(services.store)
        return [
            await evaluate_retrieval(
                services.store, gold, config, settings.relevance_floor, progress
            )
            for config in configs
        ]

    summaries = run_async(go)
    context = {
        "collection": settings.collection,
        "relevance_floor": settings.relevance_floor,
        "embedding": settings.embedding_model or settings.embedding_provider,
    }
    context.update(answered_by)
    columns, rows = headline(summaries)
    first = summaries[0]
    table = Table(
        title=Text(
            f"{gold.name}: {first.answerable} answerable, {first.unanswerable} unanswerable "
            f"(floor {settings.relevance_floor})"
        )
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "config" else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)
    tag_columns, tag_rows = tag_table(summaries)
    if len(tag_columns) > 1:
        tags = Table(title="recall@5 by tag")
        for column in tag_columns:
            tags.add_column(column, justify="left" if column == "config" else "right")
        for row in tag_rows:
            tags.add_row(*(Text(cell) for cell in row))
        console.print(tags)
    try:
        paths = write_reports(out, f"eval_{gold.name}", gold, summaries, context)
    except OSError as error:
        raise fail(RagError(f"cannot write the reports to {out}: {error}")) from None
    console.print(f"reports: {paths[0]}, {paths[1]}", highlight=False, soft_wrap=True)
