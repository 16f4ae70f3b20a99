"""Helpers for the fault and load tests: a Milvus server that can be killed and brought back,
the `rag` console script in the background, and rows read straight from Milvus.

The shared ``milvus_server`` fixture of ``tests/conftest.py`` cannot be stopped mid-test, so
``RestartableMilvus`` runs its own ``milvus-lite server``: ``kill()`` is a SIGKILL (no
shutdown, exactly a crash), ``start()`` brings it back on the same data folder and port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymilvus import MilvusClient

from tests.conftest import (
    MILVUS_LITE_BIN,
    RAG_BIN,
    _wait_for_milvus,
    cli_env,
    fake_embeddings_env,
    free_port,
    stop_process_group,
)
from tests.support.fake_openai import FakeServer


class RestartableMilvus:
    """A ``milvus-lite server`` on loopback that a test may crash and restart."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [str(MILVUS_LITE_BIN), "server", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def start(self, timeout: float = 60) -> None:
        """Start (again) on the same data folder and port; a lingering port is retried."""
        deadline = time.monotonic() + timeout
        while True:
            self.process = self._spawn()
            try:
                _wait_for_milvus(self.uri, self.process, max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError:  # exited at once, e.g. the port was still taken
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server's whole process group: a crash, not a shutdown."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)

    def client(self) -> MilvusClient:
        return MilvusClient(uri=self.uri, timeout=30)


@pytest.fixture
def restartable_milvus(tmp_path: Path) -> Iterator[RestartableMilvus]:
    server = RestartableMilvus(tmp_path / "milvus-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_rows(
    client: MilvusClient, collection: str, fields: list[str] | None = None, expr: str = 'pk != ""'
) -> list[dict[str, Any]]:
    """Every row matching ``expr``, paged with a query iterator (no 16k limit)."""
    if not client.has_collection(collection):
        return []
    client.load_collection(collection)
    iterator = client.query_iterator(
        collection, batch_size=2000, filter=expr, output_fields=fields or ["pk", "content_hash"]
    )
    rows: list[dict[str, Any]] = []
    try:
        while batch := iterator.next():
            rows.extend(dict(r) for r in batch)
    finally:
        iterator.close()
    return rows


def count_rows(client: MilvusClient, collection: str, expr: str = "") -> int:
    if not client.has_collection(collection):
        return 0
    client.load_collection(collection)
    result = client.query(collection, filter=expr, output_fields=["count(*)"])
    return int(result[0]["count(*)"])


def ingest_variables(
    milvus: RestartableMilvus, server: FakeServer, collection: str, settings: dict[str, object]
) -> dict[str, str]:
    """RAG_* variables for a CLI ingest into ``milvus`` with embeddings from ``server``."""
    return {
        "RAG_MILVUS_URI": milvus.uri,
        "RAG_COLLECTION": collection,
        **fake_embeddings_env(server.base_url),
        **{f"RAG_{k.upper()}": str(v) for k, v in settings.items()},
    }


def start_rag(*args: str, cwd: Path, log: Path, **variables: str) -> subprocess.Popen[bytes]:
    """``rag ARGS`` in the background in its own process group, output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(RAG_BIN), *args],
            cwd=cwd,
            env=cli_env(**variables),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a process group at once: no cleanup, exactly like a crash or an OOM kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (no psutil needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), read from /proc."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = Path(task, "children")
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    found.append(int(child))
                    pending.append(int(child))
    return found
