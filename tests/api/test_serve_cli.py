"""`rag serve` and `rag api-key` as a user runs them: the real console script, real processes.

The served process gets its key from `rag api-key`'s own output, answers the openai SDK on
its port, and stops cleanly on SIGTERM (the assistant closed, exit code 0). Without keys it
refuses to start, in one line that says how to mint one.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RAG_BIN, cli_env, fake_models_env, run_rag, stop_process_group
from tests.support.fake_openai import FakeServer

pytestmark = pytest.mark.slow
DOCS = {"torque.md": "# Assembly\n\nTighten the anchor nuts to 40 Nm with a torque wrench."}


@pytest.fixture
def workdir(tmp_path: Path, fake_openai: FakeServer) -> Iterator[tuple[Path, dict[str, str]]]:
    """A folder with documents ingested by `rag ingest`, and the variables of the run."""
    cwd = tmp_path / "work"
    (cwd / "docs").mkdir(parents=True)
    (cwd / "docs" / "torque.md").write_text(DOCS["torque.md"], encoding="utf-8")
    variables = fake_models_env(fake_openai.base_url) | {
        "RAG_MILVUS_URI": str(tmp_path / "serve.db"),
        "RAG_COLLECTION": "served",
        "RAG_RELEVANCE_FLOOR": "-1",
        "RAG_ANSWER_MODE": "generate",
        "RAG_ANSWER_CHECK": "off",
    }
    done = run_rag("ingest", "docs", cwd=cwd, **variables)
    assert done.returncode == 0, done.stderr
    yield cwd, variables


def test_serve_without_keys_refuses_in_one_line(workdir: tuple[Path, dict[str, str]]) -> None:
    cwd, variables = workdir
    done = run_rag("serve", "--port", "1", cwd=cwd, **variables)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAG_API_KEYS is not set" in lines[0]
    assert "rag api-key OWNER" in lines[0] and "--no-auth" in lines[0]
    bad = run_rag("serve", cwd=cwd, **variables, RAG_API_KEYS="alice:secret")
    assert bad.returncode == 2 and "not an argon2 hash" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    entry = run_rag("api-key", "alice", cwd=cwd).stdout.splitlines()[1]
    both = run_rag("serve", "--no-auth", cwd=cwd, **variables, RAG_API_KEYS=entry)
    assert both.returncode == 2 and "--no-auth would ignore RAG_API_KEYS" in both.stderr


def test_api_key_then_serve_answers_the_openai_sdk(
    workdir: tuple[Path, dict[str, str]],
) -> None:
    cwd, variables = workdir
    minted = run_rag("api-key", "alice", cwd=cwd)
    assert minted.returncode == 0, minted.stderr
    key, entry = minted.stdout.strip().splitlines()
    assert entry.startswith("alice:$argon2id$") and "RAG_API_KEYS" in minted.stderr

    from rag.local.server import free_port

    port = free_port()
    log = (cwd / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(RAG_BIN), "serve", "--port", str(port)],
        cwd=cwd,
        env=cli_env(**variables, RAG_API_KEYS=entry),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_until_serving(base_url, process, cwd / "serve.log")
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
            assert [m.id for m in client.models.list().data] == ["served"]
            completion = client.chat.completions.create(
                model="served", messages=[{"role": "user", "content": "Anchor nut torque?"}]
            )
            assert "40 Nm" in (completion.choices[0].message.content or "")
            assert (completion.model_extra or {})["sources"][0]["source"] == "torque.md"
        wrong = openai.OpenAI(base_url=base_url, api_key="alice.wrong", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        stop_process_group(process)
        log.close()
    output = (cwd / "serve.log").read_text()
    assert f"http://127.0.0.1:{port}/v1" in output and "Traceback" not in output


def wait_until_serving(
    base_url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90
) -> None:
    """Until the API answers (401 without a key is an answer), or the process has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rag serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 401:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"rag serve did not answer within {timeout} s: {log.read_text()}")
