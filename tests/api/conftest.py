"""The API served for real: uvicorn on a loopback port in a thread, with its own event loop.

The app's lifespan opens the Assistant in the server's loop, as `rag serve` does, over a
Milvus Lite file of its own and the loopback fake OpenAI server for both embeddings and the
chat model. Clients (the openai SDK, httpx) run in the tests' loops and talk HTTP to it, so
nothing is shared between the two but the socket.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from milvus_lite.server_manager import server_manager_instance

from ingest.pipeline import ingest_path
from rag.api.app import create_app
from rag.auth import mint_api_key
from rag.config import Settings
from rag.local.server import free_port
from rag.services import open_services
from tests.conftest import make_settings, write_files
from tests.support.fake_openai import FakeServer, serve

COLLECTION = "api_docs"
SHARED_DOCS = {
    "torque.md": "# Assembly\n\nTighten the anchor nuts to 40 Nm with a torque wrench.",
    "refunds.md": "# Refunds\n\nCustomers may ask for a refund within 14 days of purchase.",
}
OWNERS = ("alice", "bob")


@dataclass
class RunningApi:
    """A served API: its address, the keys it accepts, its settings and fake endpoint."""

    url: str
    keys: dict[str, str]  # owner → key
    settings: Settings
    fake: FakeServer

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def headers(self, owner: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[owner]}"}


@dataclass
class ServerThread:
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the API server did not stop"


def start_server(app: FastAPI, port: int, timeout: float = 60) -> ServerThread:
    """uvicorn in a daemon thread; returns once it accepts connections (or its start failed)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="rag-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the API server stopped during its start")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API server did not start within {timeout} s")
        time.sleep(0.02)
    return ServerThread(server, thread)


def api_settings(db: str, fake: FakeServer, tmp: Path, **overrides: Any) -> Settings:
    """Its own Lite file, the fake endpoint for embeddings and chat, answers unchecked."""
    values: dict[str, Any] = {
        "embedding_provider": "openai",
        "embedding_base_url": fake.base_url,
        "embedding_dimensions": 384,
        "llm_base_url": fake.base_url,
        "llm_model": "fake",
        "relevance_floor": -1.0,  # every hit counts: the fake embeddings score loosely
        "answer_mode": "generate",
        "answer_check": "off",
        "upload_dir": str(tmp / "uploads"),
        "milvus_timeout": 5.0,
    }
    return make_settings(db, COLLECTION, **(values | overrides))


async def ingest_shared_here(settings: Settings, folder: Path) -> None:
    """The shared documents ingested (owner SHARED), in the running loop."""
    async with open_services(settings, recreate=True) as services:
        report = await ingest_path(write_files(folder, SHARED_DOCS), services.store, settings)
        assert report.ok, report.outcomes


def ingest_shared(settings: Settings, folder: Path) -> None:
    """`ingest_shared_here` for a fixture outside any loop."""
    asyncio.run(ingest_shared_here(settings, folder))


@pytest.fixture(scope="module")
def minted() -> dict[str, tuple[str, str]]:
    """owner → (key, RAG_API_KEYS entry), minted once per module (argon2 is slow on purpose)."""
    return {owner: mint_api_key(owner) for owner in OWNERS}


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeServer]:
    with serve() as server:
        yield server


@pytest.fixture(scope="module")
def running_api(
    tmp_path_factory: pytest.TempPathFactory,
    module_fake: FakeServer,
    minted: dict[str, tuple[str, str]],
) -> Iterator[RunningApi]:
    """One API server for a module's read-mostly tests, shared documents ingested."""
    tmp = tmp_path_factory.mktemp("api")
    yield from _serve(tmp, module_fake, minted)


@pytest.fixture
def own_api(
    tmp_path: Path, fake_openai: FakeServer, minted: dict[str, tuple[str, str]]
) -> Iterator[RunningApi]:
    """An API server for one test that breaks something (its Milvus, its endpoint)."""
    yield from _serve(tmp_path, fake_openai, minted)


def _serve(tmp: Path, fake: FakeServer, minted: dict[str, tuple[str, str]]) -> Iterator[RunningApi]:
    db = str(tmp / "api.db")
    entries = ",".join(entry for _, entry in minted.values())
    settings = api_settings(db, fake, tmp, api_keys=entries)
    ingest_shared(settings, tmp / "docs")
    port = free_port()
    running = start_server(create_app(settings), port)
    try:
        keys = {owner: key for owner, (key, _) in minted.items()}
        yield RunningApi(f"http://127.0.0.1:{port}", keys, settings, fake)
    finally:
        running.stop()
        server_manager_instance.release_server(db)
