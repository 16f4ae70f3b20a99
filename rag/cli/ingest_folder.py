"""`rag ingest FOLDER`: the one command that writes documents into the collection.

With ``--shard K/N`` (or ``RAG_INGEST_SHARD``, or a Kubernetes Indexed Job's
``JOB_COMPLETION_INDEX`` with ``--shard-count``), N such processes split one folder between
them (``ingest.shard``) and write into one Milvus server.

With ``--watch`` the command stays after the first run and applies every change to the
folder as it happens (``ingest.watch``), one line per batch, until Ctrl-C (or SIGTERM) stops
it: the batch under way finishes, and a second Ctrl-C abandons it (a re-run completes it).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from rag.cli.app import CollectionOption, app, console, errors, fail, run_async, settings_or_exit
from rag.config import Settings
from rag.errors import ConfigError, SourceNotFound

if TYPE_CHECKING:
    from ingest.shard import Shard
    from ingest.watch import Batch, FolderWatch


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
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="After the first run, keep the collection in sync with the folder as files "
            "are added, changed, renamed and deleted (Ctrl-C stops).",
        ),
    ] = False,
    debounce: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="With --watch: seconds to group file events over (default 1)."
        ),
    ] = None,
    settle: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="With --watch: seconds a changed file must keep its size and time before "
            "it is read, so a file still being written waits (default 1).",
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
    if watch and not path.expanduser().is_dir():
        raise fail(ConfigError(f"--watch keeps a folder in sync; {path} is not a folder"))
    if not watch and (debounce is not None or settle is not None):
        raise fail(ConfigError("--debounce and --settle are for --watch"))

    async def go() -> bool:
        if watch:
            return await watch_folder(
                path, settings, part, recreate=recreate, include=include or (),
                exclude=exclude or (), keep_missing=keep_missing, debounce=debounce,
                settle=settle,
            )  # fmt: skip
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


async def watch_folder(
    path: Path,
    settings: Settings,
    part: Shard | None,
    *,
    recreate: bool,
    debounce: float | None,
    settle: float | None,
    **options: Any,
) -> bool:
    """The first run as without --watch, then batch after batch until a signal stops it.

    ``options``: FolderWatch's include, exclude and keep_missing.
    """
    from ingest.report import ConsoleReporter, summary_table
    from ingest.watch import DEBOUNCE, SETTLE, FolderWatch
    from rag.services import open_services

    async with open_services(settings, recreate=recreate) as services:
        with ConsoleReporter(console) as reporter:
            watcher = FolderWatch(
                path,
                services.store,
                settings,
                shard=part,
                debounce=DEBOUNCE if debounce is None else debounce,
                settle=SETTLE if settle is None else settle,
                notes=reporter,
                **options,
            )
            report = await watcher.sync(reporter)
        console.print(summary_table(report))
        if not report.ok:
            errors.print("[bold red]some files failed[/] (listed above); watching goes on")
        await _until_signalled(watcher)
    return True


async def _until_signalled(watcher: FolderWatch) -> None:
    """Watch until SIGINT or SIGTERM; a second SIGINT interrupts the batch under way.

    The first signal only sets the watch's stop event, so the batch under way finishes;
    then the handler is removed, which gives SIGINT back to Python's default handler
    (asyncio's ``remove_signal_handler`` restores ``default_int_handler``), and a second
    Ctrl-C raises KeyboardInterrupt, reported by ``run_async`` like any interrupted ingest.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    shown = escape(str(watcher.root))

    def stopping() -> None:
        if not stop.is_set():
            console.print("stopping after the batch under way (Ctrl-C again abandons it)")
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping)
    console.print(f"watching {shown} for changes (Ctrl-C stops)", highlight=False)
    try:
        await watcher.watch(stop, _print_batch)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    console.print(f"stopped watching {shown}", highlight=False)


def _print_batch(batch: Batch) -> None:
    if (line := batch.line()) is not None:
        console.print(line, highlight=False)


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
