"""The `rag` command: a thin Typer layer over the Python API in `rag/` and `ingest/`.

`rag.cli.app` holds the Typer app and the shared options; each command group lives in
its own module and registers itself on that app when imported here, so `app` never
imports its commands (the import contract in `pyproject.toml` keeps it that way).
"""

from rag.cli import (  # noqa: F401  (each registers its commands on `app`)
    api,
    ask,
    collections,
    doctor,
    evaluate,
    feedback,
    ingest_folder,
    passwd,
    serve,
)
from rag.cli.app import app

__all__ = ["app"]
