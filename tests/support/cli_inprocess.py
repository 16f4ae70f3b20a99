"""`rag ARGS` run inside the test process through typer's CliRunner, shaped like ``run_rag``.

A console script pays Python, LangChain and the local model's load (seconds) before it does
anything; a module that runs a dozen commands against one database spends most of its time
there. In-process, the same Typer app, settings loading, one-line errors and exit codes run;
each command module keeps at least one real-process test (``run_rag``) for the script itself.

What a real process gives for free is recreated here: no inherited ``RAG_*`` variable and
no ``.env`` of the developer's (cwd is the test's folder), a 200-column console (rich reads
``COLUMNS`` from ``os.environ`` on every size lookup, see ``rich.console.Console.size``),
and the database file free again afterwards (Milvus Lite runs in the calling process and
locks the file until ``release_server``, ``milvus_lite.server_manager``). The logging the
command's callback configures for itself (``rag.cli.app.main``: basicConfig, quieter
library loggers) is put back afterwards, so it cannot change what later tests log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings
from milvus_lite.server_manager import server_manager_instance
from typer.testing import CliRunner

import rag.services
from rag.cli import app
from rag.cli.app import console, errors

CONSOLE = {"COLUMNS": "200", "NO_COLOR": "1"}
QUIETED = ("langchain_milvus", "grpc._server")  # the loggers rag.cli.app.main sets


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """Root handlers and level, and the levels ``main`` sets, as they were before."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


def invoke_rag(
    *args: str,
    cwd: Path,
    input: str | None = None,
    embeddings: Embeddings | None = None,
    **variables: str,
) -> subprocess.CompletedProcess[str]:
    """Run ``rag ARGS`` in this process; ``embeddings`` stands in for the local model (the
    session's loaded copy) wherever the command would build one.

    Commands run their own event loop (``asyncio.run`` in ``rag.cli.app.run_async``), which
    cannot start where one is running: inside an async test, or once Playwright's sync API
    is up (it keeps a loop running in the calling thread). There the command runs in a
    worker thread while the caller waits, as a blocking call would.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop here: run in this thread
        return _invoke(args, cwd, input, embeddings, variables)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_invoke, args, cwd, input, embeddings, variables).result()


def unfrozen_width(patch: pytest.MonkeyPatch) -> None:
    """Let the CLI's consoles size themselves from the environment at each print.

    A rich Console made while COLUMNS was set keeps that width for good (its ``__init__``
    turns it into ``_width``), and pytest-xdist's workers have COLUMNS set when the CLI is
    imported; a command run in-process should read the runner's COLUMNS, as a fresh
    process would.
    """
    for shown in (console, errors):
        patch.setattr(shown, "_width", None)


def _invoke(
    args: tuple[str, ...],
    cwd: Path,
    input: str | None,
    embeddings: Embeddings | None,
    variables: dict[str, str],
) -> subprocess.CompletedProcess[str]:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RAG_")}
    # CliRunner's default "sys" capture: stdout and stderr kept apart (click >= 8.2).
    runner = CliRunner(env={**unset, **CONSOLE, **variables})
    with contextlib.chdir(cwd), logging_kept(), pytest.MonkeyPatch.context() as patch:
        unfrozen_width(patch)
        if embeddings is not None:
            real = rag.services.build_embeddings
            patch.setattr(
                rag.services,
                "build_embeddings",
                lambda s: embeddings if s.embedding_provider == "local" else real(s),
            )
        try:
            result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
        finally:
            uri = variables.get("RAG_MILVUS_URI", "")
            if uri and "://" not in uri:  # a Milvus Lite file: free its lock for the next one
                server_manager_instance.release_server(str(Path(cwd, uri)))
    return subprocess.CompletedProcess(["rag", *args], result.exit_code, result.stdout,
                                       result.stderr)  # fmt: skip
