"""The Typer app and what every command shares: options, one-line errors, running async code.

Command modules import from here; this module never imports them (see `rag/cli/__init__.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from rag.choices import SEARCH_MODES
from rag.config import Settings, load_settings
from rag.errors import RagError

app = typer.Typer(
    help="Ask questions about your documents: ingest a folder into Milvus, then chat with it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")


Mode = StrEnum("Mode", {mode: mode for mode in SEARCH_MODES})


ModeOption = Annotated[
    Mode | None,
    typer.Option("--mode", "-m", help=f"{', '.join(SEARCH_MODES)} (default: RAG_SEARCH_MODE)."),
]

MmrOption = Annotated[bool | None, typer.Option("--mmr/--no-mmr", help="Diversify passages (MMR).")]

CollectionOption = Annotated[
    str | None,
    typer.Option("--collection", "-c", help="Collection to use (default: RAG_COLLECTION)."),
]

# Who the search runs as: by default nobody in particular, who sees the shared documents
# only; an owner key (the OWNER column of `rag sources`) also sees that owner's uploads,
# exactly as that user's chat does, so an operator can check what someone is answered from.
ViewerOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        metavar="OWNER",
        help="Search as this owner (see `rag sources`): shared documents plus their uploads.",
    ),
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
