"""`rag ingest FOLDER`: the one command that writes documents into the collection.

With ``--shard K/N`` (or ``RAG_INGEST_SHARD``, or a Kubernetes Indexed Job's
``JOB_COMPLETION_INDEX`` with ``--shard-count``), N such processes split one folder between
them (``ingest.shard``) and write into one Milvus server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rag.cli.app import CollectionOption, app, console, errors, fail, run_async, settings_or_exit
from rag.config import Settings
from rag.errors import ConfigError, SourceNotFound

if TYPE_CHECKING:
    from ingest.shard import Shard


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
    shard: Annotated[
        str | None,
        typer.Option(
            help="K/N: ingest only the K-th of N hash partitions of the folder, one of N "
            "workers on one Milvus server (default: RAG_INGEST_SHARD)."
        ),
    ] = None,
    shard_count: Annotated[
        int | None,
        typer.Option(
            help="N, with the 0-based K-1 from JOB_COMPLETION_INDEX (a Kubernetes Indexed "
            "Job; default: RAG_INGEST_SHARD_COUNT)."
        ),
    ] = None,
) -> None:
    """Load, split, embed and write a folder of documents; re-runs write only what changed."""
    from ingest.pipeline import ingest_path
    from ingest.report import ConsoleReporter, summary_table
    from rag.services import open_services

    settings = settings_or_exit(collection=collection)
    try:
        part = worker_shard(settings, shard, shard_count, recreate=recreate)
    except ConfigError as error:
        raise fail(error) from None
    if not path.expanduser().exists():
        raise fail(SourceNotFound(f"no such file or folder: {path}"))

    async def go() -> bool:
        async with open_services(settings, recreate=recreate) as services:
            with ConsoleReporter(console) as reporter:
                report = await ingest_path(
                    path,
                    services.store,
                    settings,
                    reporter,
                    include=include or (),
                    exclude=exclude or (),
                    keep_missing=keep_missing,
                    shard=part,
                )
            console.print(summary_table(report))
            return report.ok

    if not run_async(go):
        errors.print("[bold red]some files failed[/] (listed above); the others were ingested")
        raise typer.Exit(1)


def worker_shard(
    settings: Settings, option: str | None, count: int | None, *, recreate: bool
) -> Shard | None:
    """This worker's shard (None: the whole folder), checked against what sharding needs.

    A Milvus Lite file is locked by the process that opens it, so N workers need a server;
    and one worker dropping the collection (``--recreate``) would delete the rows the others
    are writing.
    """
    from ingest.shard import resolve_shard

    part = resolve_shard(
        option, count, settings.ingest_shard, settings.ingest_shard_count, os.environ
    )
    if part is None or part.count == 1:
        return part
    if settings.milvus_is_local:
        raise ConfigError(
            f"shard {part}: several ingest workers need a Milvus server (RAG_MILVUS_URI="
            "http://host:19530); a Milvus Lite file is opened by one process at a time"
        )
    if recreate:
        raise ConfigError(
            f"shard {part}: --recreate would drop the rows the other workers write; drop "
            "the collection once (`rag drop`) before starting them"
        )
    return part
