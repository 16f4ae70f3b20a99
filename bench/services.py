"""Loopback services for benchmarks: the latency-injecting embeddings server and Milvus targets.

Each runs as its own process, so the benchmark's event loop measures only the
client side, as it would against a remote API and a remote Milvus.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rag.local_llm import stop_process_group

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"service on port {port} did not start in {timeout:.0f} s")


@contextlib.contextmanager
def _process(command: list[str], port: int, timeout: float = 60) -> Iterator[None]:
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_port(port, process, timeout)
        yield
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def fake_openai(
    latency: float, jitter: float, rpm: int | None = None, chat_token_delay: float = 0.0
) -> Iterator[str]:
    """The tests' fake OpenAI server with per-request latency; yields its base URL."""
    port = free_port()
    command = [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--port", str(port),
               "--embed-latency", str(latency), "--embed-jitter", str(jitter),
               "--chat-token-delay", str(chat_token_delay)]  # fmt: skip
    if rpm:
        command += ["--rpm", str(rpm), "--retry-after", "1"]
    with _process(command, port):
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def milvus_target(kind: str) -> Iterator[str | None]:
    """A Milvus URI: 'lite' (a file), 'lite-server' (milvus-lite server on loopback) or
    'standalone' (milvus-server from the PyPI `milvus` package, when installed; else None)."""
    folder = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    try:
        if kind == "lite":
            yield str(folder / "bench.db")
        elif kind == "lite-server":
            port = free_port()
            binary = shutil.which("milvus-lite") or str(Path(sys.executable).parent / "milvus-lite")
            command = [binary, "server", "--data-dir", str(folder), "--host", "127.0.0.1",
                       "--port", str(port)]  # fmt: skip
            with _process(command, port):
                yield f"http://127.0.0.1:{port}"
        elif kind == "standalone":
            binary = shutil.which("milvus-server")
            if binary is None:
                yield None
                return
            port = free_port()
            command = [binary, "--data", str(folder), "--listen-port", str(port)]
            with _process(command, port, timeout=180):
                yield f"http://127.0.0.1:{port}"
        else:
            raise ValueError(kind)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
