"""`rag sources`, `rag remove`, `rag collections`, `rag drop`: see and prune what is stored."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from rag.cli.app import CollectionOption, app, console, errors, run_async, settings_or_exit
from rag.errors import explain

if TYPE_CHECKING:
    from rag.store.catalog import Removal, SourceInfo

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SHARED_LABEL = "shared"  # how `rag sources` shows rows everyone may see (owner "")


def _owner_label(owner: str) -> Text:
    return Text(SHARED_LABEL, style="dim") if not owner else Text(owner)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)  # pragma: no cover


@app.command()
def sources(collection: CollectionOption = None, as_json: JsonOption = False) -> None:
    """List the ingested files with owner, chunks, hash, size and ingest time (from Milvus).

    The owner is who may see a file: "shared" for folder ingests, otherwise the user (or
    chat thread) that uploaded it.
    """
    from rag.services import open_services
    from rag.store.catalog import list_sources
    from rag.store.milvus import MILVUS_ERRORS, milvus_service

    settings = settings_or_exit(collection=collection)

    async def go() -> list[SourceInfo]:
        services = await open_services(settings)
        try:
            return await list_sources(services.store)
        except MILVUS_ERRORS as error:
            raise explain(error, milvus_service(settings)) from error

    found = run_async(go)
    if as_json:
        print(json.dumps([s.to_dict() for s in found], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{len(found)} files in {settings.collection}")
    for column in ("source", "owner", "chunks", "size", "sha256", "ingested at"):
        table.add_column(
            column,
            justify="right" if column in ("chunks", "size") else "left",
            overflow="fold",
        )
    for info in found:
        chunks = str(info.chunks)
        if not info.complete:
            chunks += f" of {info.expected_chunks} (incomplete: ingest again)"
        table.add_row(
            Text(info.source),
            _owner_label(info.owner),
            chunks,
            _size(info.file_size),
            info.file_hash[:12],
            info.ingested_at,
        )
    console.print(table)


@app.command()
def remove(
    patterns: Annotated[
        list[str] | None,
        typer.Argument(
            help="Stored path, folder or glob (e.g. 'old/*.pdf'); optional with --owner."
        ),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner",
            help="Remove only this owner's files (the owner column of `rag sources`; "
            "'' for the shared ones); with no pattern, all of them.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Show what would go; delete nothing.")
    ] = False,
    collection: CollectionOption = None,
) -> None:
    """Remove the chunks of some ingested files from the collection.

    Without --owner, a pattern removes the matching files of every owner, as it always
    did; with --owner, only that owner's rows go, and shared files stay.
    """
    from rag.services import open_services
    from rag.store.catalog import remove_sources
    from rag.store.milvus import MILVUS_ERRORS, milvus_service

    patterns = patterns or []
    if not patterns and owner is None:
        errors.print("name a stored path, folder or glob, or an --owner (see `rag sources`)")
        raise typer.Exit(2)
    settings = settings_or_exit(collection=collection)

    async def go() -> Removal:
        services = await open_services(settings)
        try:
            return await remove_sources(services.store, patterns, owner=owner, dry_run=dry_run)
        except MILVUS_ERRORS as error:
            raise explain(error, milvus_service(settings)) from error

    removal = run_async(go)
    if not removal.sources:
        asked = " ".join(patterns) or "any file"
        whose = f" of owner {owner!r}" if owner is not None else ""
        errors.print(f"nothing matches {asked}{whose} (see `rag sources`)", highlight=False)
        raise typer.Exit(1)
    verb = "would remove" if dry_run else "removed"
    for info in removal.sources:
        whose = SHARED_LABEL if not info.owner else info.owner
        console.print(Text(f"  {info.source} [{whose}] ({info.chunks} chunks)"))
    console.print(f"{verb} {removal.rows} rows from {len(removal.sources)} files", highlight=False)


@app.command("collections")
def list_collections_command(as_json: JsonOption = False) -> None:
    """List the collections on the configured Milvus with model, dimension and rows."""
    from rag.store.milvus import list_collections

    settings = settings_or_exit()
    found = run_async(lambda: asyncio.to_thread(list_collections, settings))
    if as_json:
        print(json.dumps([c.to_dict() for c in found], indent=2))
        return
    table = Table(title=f"Collections at {settings.milvus_uri}")
    for column in ("name", "rows", "embedding model", "dim", "bm25"):
        table.add_column(column)
    for info in found:
        ident = info.identity
        table.add_row(
            Text(info.name + (" (default)" if info.name == settings.collection else "")),
            str(info.rows),
            Text(ident.embedding_model) if ident else Text("not created by rag", style="dim"),
            str(ident.dimension) if ident else "",
            ("yes" if ident.bm25 else "no") if ident else "",
        )
    console.print(table)


@app.command()
def drop(
    name: Annotated[str, typer.Argument(help="Collection to delete, with all its rows.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a whole collection (asks first unless --yes)."""
    from rag.store.milvus import drop_collection

    settings = settings_or_exit()
    if not yes and not typer.confirm(f"Delete collection {name!r} and all its rows?"):
        errors.print("nothing deleted")
        raise typer.Exit(1)
    rows = run_async(lambda: asyncio.to_thread(drop_collection, settings, name))
    console.print(f"dropped {name!r} ({rows} rows)", highlight=False)
