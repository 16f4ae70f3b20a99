"""Chat history end to end: `rag ui` processes on SQLite and on a throwaway PostgreSQL.

Real processes and protocols only: `rag ingest`, `rag ui` (Chainlit with the SQLAlchemy data
layer), `rag feedback`, the socket.io client of ``tests/support/chainlit_client.py`` with
a real login cookie, Chainlit's HTTP API (threads, thread, feedback), and the loopback fake
OpenAI server, whose recorded requests show what the model was asked after a conversation
was resumed. The schema and its migrations are tested on their own in test_history_schema.py.

`rag feedback` runs once as the console script; the ingests that set a test up and the other
exports run in-process (``invoke_rag``), which spares seconds of start-up each.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.local.server import free_port
from tests.conftest import MILVUS_LITE_BIN, _wait_for_milvus, stop_process_group
from tests.support.chainlit_client import ChainlitClient, Turn, login
from tests.support.cli_inprocess import invoke_rag
from tests.support.fake_openai import FakeOpenAI, FakeServer, serve
from tests.support.ui_process import RAG_BIN, start_ui, stop_group, wait_http
from tests.ui.test_chat_ui import (
    DOCS,
    FALCON_Q,
    OLGA_Q,
    _env,
)

pytestmark = pytest.mark.slow

USERS = {"RAG_UI_USERS": "alice:wonderland,bob:builder", "CHAINLIT_AUTH_SECRET": "k" * 48}
FOLLOW_UP = "And the wifi password of the Tallinn office?"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with serve(FakeOpenAI()) as server:
        yield server


def _write_docs(root: Path) -> Path:
    docs = root / "docs"
    for relative, content in DOCS.items():
        (docs / relative).parent.mkdir(parents=True, exist_ok=True)
        (docs / relative).write_text(content, encoding="utf-8")
    return docs


def _rag(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAG_BIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


async def _rag_here(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``rag ARGS`` in this process, in a thread: the command runs its own event loop."""
    variables = {k: v for k, v in env.items() if k.startswith("RAG_")}
    return await asyncio.to_thread(invoke_rag, *args, cwd=cwd, **variables)


async def _ingest(root: Path, env: dict[str, str]) -> None:
    result = await _rag_here("ingest", str(_write_docs(root)), cwd=root, env=env)
    assert result.returncode == 0, f"rag ingest failed:\n{result.stdout}\n{result.stderr}"


@contextlib.contextmanager
def _uis(root: Path, env: dict[str, str], count: int = 1) -> Iterator[list[str]]:
    """``count`` `rag ui` processes on free ports (started together); yields their URLs."""
    started = []
    try:
        for _ in range(count):
            port, log = free_port(), root / f"ui-{time.monotonic_ns()}.log"
            process = start_ui(cwd=root, env=env, log=log, port=port)
            started.append((f"http://127.0.0.1:{port}", process, log))
        for url, process, log in started:
            wait_http(f"{url}/auth/config", process, log, timeout=60)
        yield [url for url, _, _ in started]
    finally:
        for _, process, _ in started:
            stop_group(process)


async def _client(url: str, user: str, thread_id: str = "") -> ChainlitClient:
    """A signed-in tab; with ``thread_id`` it resumes that thread. Ready once settings came."""
    password = dict(p.split(":") for p in USERS["RAG_UI_USERS"].split(","))[user]
    client = ChainlitClient(url, cookies=await login(url, user, password), thread_id=thread_id)
    await client.connect()
    await client.wait_for("chat_settings", limit=30)
    return client


async def _stored(
    client: ChainlitClient, thread_id: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The thread as stored, once ``ready(thread)`` (steps are written in background tasks)."""
    deadline, body = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        status, body = await client.thread(thread_id)
        if status == 200 and body and ready(body):
            return dict(body)
        await asyncio.sleep(0.2)
    raise AssertionError(f"thread {thread_id} never got ready: {body}")


def _has_feedback(thread: dict[str, Any]) -> bool:
    return any(step.get("feedback") for step in thread["steps"])


def _meta(step: dict[str, Any]) -> dict[str, Any]:
    meta = step.get("metadata") or {}
    return dict((json.loads(meta) if isinstance(meta, str) else meta)["rag"])


def _condense_prompt(fake: FakeServer) -> str:
    prompts = [
        "\n".join(str(m.get("content")) for m in body.get("messages", []))
        for body in fake.fake.chat_requests()
    ]
    condense = [p for p in prompts if "tand-alone question" in p or "tandalone question" in p]
    assert condense, prompts
    return condense[0]


def _answer(turn: Turn) -> str:
    return str(turn.answer["output"])


# --------------------------------------------------------------------------------------------


async def test_history_survives_a_restart_and_feedback_is_exported(
    tmp_path: Path, fake: FakeServer
) -> None:
    env = _env(tmp_path, fake.base_url) | USERS
    env["RAG_DATABASE_URL"] = f"sqlite:///{tmp_path / 'history' / 'chat.db'}"
    await _ingest(tmp_path, env)

    with _uis(tmp_path, env) as (url,):
        alice = await _client(url, "alice")
        turn = await alice.ask(FALCON_Q)
        answer = turn.answer
        thread_id = answer["threadId"]
        meta = _meta(answer)
        assert meta["question"] == FALCON_Q and "ZX-4471" in meta["answer"], meta
        assert "**Sources**" not in meta["answer"]
        assert meta["sources"][0]["source"] == "falcon.txt", meta
        assert "ZX-4471" in meta["sources"][0]["text"]
        await alice.feedback(answer["id"], 0, "should also say who rotates it", thread_id)
        await _stored(alice, thread_id, _has_feedback)
        await alice.close()

    # a new process on the same database: the thread is listed, stored and resumable
    fake.fake.reset()
    with _uis(tmp_path, env) as (url,):
        alice = await _client(url, "alice")
        listed = await alice.threads()
        assert [t["id"] for t in listed] == [thread_id], listed
        assert listed[0]["name"] == FALCON_Q
        thread = await _stored(alice, thread_id, _has_feedback)
        (element, *_) = [e for e in thread["elements"] if e["name"] == "[1] falcon.txt"]
        head, _, data = element["url"].partition(";base64,")
        assert head.startswith("data:text/plain"), element
        assert "ZX-4471" in base64.b64decode(data).decode("utf-8")
        await alice.close()

        resumed = await _client(url, "alice", thread_id=thread_id)
        assert (await resumed.resumed())["id"] == thread_id
        follow = await resumed.ask(FOLLOW_UP)
        assert "kelp-harbor-93" in _answer(follow)
        condense = _condense_prompt(fake)
        assert f"User: {FALCON_Q}" in condense and "ZX-4471" in condense, condense
        assert "**Sources**" not in condense, condense
        assert follow.answer["threadId"] == thread_id
        await resumed.feedback(follow.answer["id"], 1, None, thread_id)
        await _stored(
            resumed, thread_id, lambda t: sum(bool(s.get("feedback")) for s in t["steps"]) == 2
        )
        await resumed.close()

    jsonl = _rag("feedback", cwd=tmp_path, env=env)
    assert jsonl.returncode == 0, jsonl.stderr
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [(r["question"], r["score"]) for r in records] == [
        (FALCON_Q, "down"),
        (FOLLOW_UP, "up"),
    ], records
    down = records[0]
    assert down["thread_id"] == thread_id and down["user"] == "alice"
    assert "ZX-4471" in down["answer"] and down["comment"] == "should also say who rotates it"
    assert down["sources"][0]["source"] == "falcon.txt" and down["time"].endswith("Z")

    out = tmp_path / "feedback.csv"
    table = await _rag_here(
        "feedback", "--format", "csv", "--output", str(out), cwd=tmp_path, env=env
    )
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [r["score"] for r in rows] == ["down", "up"], rows
    assert rows[0]["sources"].startswith("falcon.txt") and rows[0]["user"] == "alice"

    evals = await _rag_here("feedback", "--as-eval", "--score", "down", cwd=tmp_path, env=env)
    assert evals.returncode == 0, evals.stderr
    assert [json.loads(line) for line in evals.stdout.splitlines()] == [
        {"question": FALCON_Q, "answer": "should also say who rotates it", "source": "falcon.txt"}
    ]


async def test_two_uis_share_one_postgresql_history(
    tmp_path: Path, fake: FakeServer, postgres_url: str, milvus_server: str
) -> None:
    env = _env(tmp_path, fake.base_url) | USERS
    env |= {"RAG_MILVUS_URI": milvus_server, "RAG_DATABASE_URL": postgres_url}
    await _ingest(tmp_path, env)

    with _uis(tmp_path, env, count=2) as (one, two):
        alice_one = await _client(one, "alice")
        turn = await alice_one.ask(OLGA_Q)
        thread_id = turn.answer["threadId"]
        await alice_one.feedback(turn.answer["id"], 1, "spot on", thread_id)
        await _stored(alice_one, thread_id, _has_feedback)
        await alice_one.close()

        alice_two = await _client(two, "alice")
        assert [t["id"] for t in await alice_two.threads()] == [thread_id]
        await alice_two.close()
        bob = await _client(two, "bob")
        assert await bob.threads() == []
        status, _ = await bob.thread(thread_id)
        assert status in (401, 403, 404), status
        await bob.close()

        fake.fake.reset()
        resumed = await _client(two, "alice", thread_id=thread_id)
        await resumed.resumed()
        follow = await resumed.ask(FOLLOW_UP)
        assert "kelp-harbor-93" in _answer(follow)
        assert "smoked plums" in _condense_prompt(fake)
        await resumed.close()

    exported = await _rag_here("feedback", cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr
    (record,) = [json.loads(line) for line in exported.stdout.splitlines()]
    assert record["user"] == "alice" and record["score"] == "up" and record["comment"] == "spot on"
    assert record["question"] == OLGA_Q and record["sources"][0]["source"] == "kitchen/olga.md"


async def test_milvus_down_at_start_is_reported_and_the_chat_recovers(
    tmp_path: Path, fake: FakeServer
) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = _env(tmp_path, fake.base_url) | {
        "RAG_MILVUS_URI": uri,
        "RAG_MILVUS_TIMEOUT": "3",
        "RAG_DATABASE_URL": "",
    }
    with _uis(tmp_path, env) as (url,):
        client = ChainlitClient(url)
        await client.connect()
        _, event = await client.wait_for(
            "new_message", limit=40, where=lambda d: "⚠️" in d.get("output", "")
        )
        warning = event.data["output"]
        assert "Milvus" in warning and uri in warning and "next message" in warning, warning

        log = (tmp_path / "milvus.log").open("wb")
        command = [str(MILVUS_LITE_BIN), "server", "--data-dir", str(tmp_path / "milvus"),
                   "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        milvus = await asyncio.to_thread(
            subprocess.Popen, command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            # off the event loop, so the client's socket keeps answering pings meanwhile
            await asyncio.to_thread(_wait_for_milvus, uri, milvus, 60)
            await _ingest(tmp_path, env)
            turn = await client.ask(FALCON_Q, limit=60)
            assert "ZX-4471" in _answer(turn), turn.summary()
            # the session got its settings panel once Milvus answered
            assert turn.named("chat_settings"), turn.summary()
        finally:
            await client.close()
            stop_process_group(milvus)
            log.close()
