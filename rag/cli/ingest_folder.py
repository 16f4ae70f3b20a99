"""`rag ingest FOLDER`: the one command that writes documents into the collection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag.cli.app import CollectionOption, app, console, errors, fail, run_async, settings_or_exit
from rag.errors import SourceNotFound


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
    from ingest.report import ConsoleReporter, summary_table
    from rag.services import open_services

    settings = settings_or_exit(collection=collection)
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
                )
            console.print(summary_table(report))
            return report.ok

    if not run_async(go):
        errors.print("[bold red]some files failed[/] (listed above); the others were ingested")
        raise typer.Exit(1)
