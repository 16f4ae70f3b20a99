"""`rag ask` as a user runs it: the console script in a subprocess, a database built by
`rag ingest`, and the loopback fake OpenAI server as the chat model.

Milvus Lite locks a database file to one process, so each command opens the database in
turn. Streaming, the cut-off stream and the unreachable model run as the console script;
the database is filled, and the JSON and off-topic answers are checked, in-process
(``invoke_rag``, with the session's loaded local model): the same app and output without
seconds of start-up each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag.chain import NOTHING_FOUND
from rag.embeddings import LocalMiniLMEmbeddings
from rag.errors import ModelUnavailable
from rag.local.server import free_port
from tests.conftest import copy_samples
from tests.support.cli_inprocess import invoke_rag
from tests.support.fake_openai import FakeServer, serve

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DOCS = REPO_ROOT / "sample_docs"
RAG_BIN = Path(sys.executable).parent / "rag"
CORPUS = ["price_list_2025.pdf", "it_helpdesk_guide.txt", "customer_faq.html"]
PRICE_QUESTION = "What is the price of SKU SRV-DIAG?"
TIMEOUT = 120


@dataclass(frozen=True)
class Workspace:
    cwd: Path  # no .env here, so only the variables we pass count
    db: Path
    embeddings: LocalMiniLMEmbeddings


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    chunks: list[tuple[float, str]]  # stdout as it arrived: (seconds since start, text)

    def arrival(self, text: str) -> float:
        """When ``text`` had completely arrived on stdout."""
        seen = ""
        for moment, chunk in self.chunks:
            seen += chunk
            if text in seen:
                return moment
        raise AssertionError(f"{text!r} never printed; stdout was:\n{self.stdout}")


def rag_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "TERM": "dumb"})
    env.update(variables)
    return env


def run_rag(*args: str, cwd: Path, **variables: str) -> Run:
    """Run ``rag ARGS``, recording when each piece of stdout arrives."""
    with (cwd / "stderr.log").open("w+b") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(RAG_BIN), *args],
            cwd=cwd,
            env=rag_env(**variables),
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        chunks: list[tuple[float, str]] = []
        raw = b""
        try:
            while block := os.read(process.stdout.fileno(), 65536):
                raw += block
                chunks.append((time.perf_counter() - started, block.decode(errors="replace")))
                if time.perf_counter() - started > TIMEOUT:
                    raise TimeoutError(f"rag {' '.join(args)} ran for more than {TIMEOUT} s")
            returncode = process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        stderr.seek(0)
        return Run(returncode, raw.decode(), stderr.read().decode(errors="replace"), chunks)


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, local_embeddings: LocalMiniLMEmbeddings
) -> Workspace:
    """Three sample documents ingested by `rag ingest` into a fresh database file."""
    root = tmp_path_factory.mktemp("ask-cli")
    docs = copy_samples(root / "docs", CORPUS)
    cwd = root / "cwd"
    cwd.mkdir()
    db = root / "milvus.db"
    run = invoke_rag("ingest", str(docs), cwd=cwd, embeddings=local_embeddings,
                     RAG_MILVUS_URI=str(db))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert db.exists()
    return Workspace(cwd, db, local_embeddings)


@pytest.fixture
def fake_llm() -> Iterator[FakeServer]:
    with serve() as server:
        yield server


def ask(workspace: Workspace, base_url: str, *args: str) -> Run:
    return run_rag(
        "ask",
        *args,
        cwd=workspace.cwd,
        RAG_MILVUS_URI=str(workspace.db),
        RAG_LLM_BASE_URL=base_url,
        RAG_LLM_MODEL="fake",
    )


def ask_here(workspace: Workspace, base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``rag ask ARGS`` in-process: the same command, without a process start."""
    return invoke_rag(
        "ask",
        *args,
        cwd=workspace.cwd,
        embeddings=workspace.embeddings,
        RAG_MILVUS_URI=str(workspace.db),
        RAG_LLM_BASE_URL=base_url,
        RAG_LLM_MODEL="fake",
    )


def test_ask_streams_the_answer_then_prints_a_sources_table(
    workspace: Workspace, fake_llm: FakeServer
) -> None:
    reply = "SRV-DIAG is the out-of-warranty diagnostic fee of EUR 180 per product, as listed [1]."
    fake_llm.fake.config.chat_reply = reply
    fake_llm.fake.config.chat_token_delay = 0.1  # 15 chunks: about 1.4 s of streaming

    run = ask(workspace, fake_llm.base_url, PRICE_QUESTION)

    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == ""
    assert reply in run.stdout
    lines = run.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.strip() == "Sources")
    table = "\n".join(lines[title:])
    for column in ("#", "source", "page", "score", "cited"):
        assert column in lines[title + 2], lines[title + 2]
    rows = [line for line in lines[title:] if "[" in line and "]" in line]
    assert rows, table
    first = rows[0].replace("│", " ").split()
    assert first[:3] == ["[1]", "price_list_2025.pdf", "1"], rows[0]
    assert first[-1] == "yes"  # the reply cites [1]
    assert all(row.replace("│", " ").split()[-1] != "yes" for row in rows[1:])
    assert "Closest passages" not in table

    # Streamed: the first words were on screen well before the answer was complete.
    first_words, last_words = run.arrival("SRV-DIAG is"), run.arrival("as listed [1].")
    assert last_words - first_words >= 0.7, (first_words, last_words)
    assert run.arrival("Sources") >= last_words
    (request,) = fake_llm.fake.chat_requests()
    assert request["model"] == "fake" and request["stream"] is True


def test_ask_json_prints_one_json_object(workspace: Workspace, fake_llm: FakeServer) -> None:
    run = ask_here(
        workspace,
        fake_llm.base_url,
        "--json",
        "--k",
        "2",
        "--source",
        "price_list_2025.pdf",
        PRICE_QUESTION,
    )

    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)  # the whole of stdout: no streamed tokens around it
    assert data["question"] == data["standalone_question"] == PRICE_QUESTION
    assert data["answered"] is True
    assert data["answer"].startswith("According to the documents, ")
    assert data["answer"].endswith("[1].")
    assert data["cited"] == [1]
    sources = data["sources"]
    assert [s["n"] for s in sources] == [1, 2]
    assert {s["source"] for s in sources} == {"price_list_2025.pdf"}
    for source in sources:
        assert isinstance(source["score"], float) and source["score"] >= 0.3
        assert source["text"].strip()
        assert source["page"] in (1, 2)
    assert sources[0]["score"] >= sources[1]["score"]
    assert "SRV-DIAG" in "".join(s["text"] for s in sources)
    assert len(fake_llm.fake.chat_requests()) == 1


def test_ask_off_topic_lists_closest_passages_without_asking_the_model(
    workspace: Workspace, fake_llm: FakeServer
) -> None:
    run = ask_here(workspace, fake_llm.base_url, "Who won the 2018 football world cup?")

    assert run.returncode == 0, run.stderr
    assert NOTHING_FOUND in " ".join(run.stdout.split())
    assert "Closest passages (below the relevance floor)" in run.stdout
    assert "yes" not in run.stdout.split("Closest passages")[1]
    assert fake_llm.fake.chat_requests() == []


def test_ask_with_unreachable_model_fails_in_one_line(workspace: Workspace) -> None:
    where = f"http://127.0.0.1:{free_port()}/v1"
    run = ask(workspace, where, PRICE_QUESTION)

    assert run.returncode == ModelUnavailable.exit_code != 0
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines == [f"error: the chat model at {where} is not reachable; is it running?"]
    assert "Sources" not in run.stdout


def test_ask_with_interrupted_stream_keeps_the_partial_answer(
    workspace: Workspace, fake_llm: FakeServer
) -> None:
    fake_llm.fake.drop_stream_after(4)  # role chunk + three words

    run = ask(workspace, fake_llm.base_url, PRICE_QUESTION)

    assert run.returncode == ModelUnavailable.exit_code
    assert run.stdout.strip() == "According to the"
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"error: the chat model at {fake_llm.base_url} ")
    assert line.endswith("(the answer was cut off)")
