"""`rag ui` as a real process on a free port: started, waited for, stopped with its children.

Every test that needs the running chat (socket client, browser, login, history, the
installed wheel) goes through here, so a start that fails shows the UI's log the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from rag.local.server import free_port

RAG_BIN = Path(sys.executable).parent / "rag"


def stop_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM the process group started with start_new_session=True, then SIGKILL leftovers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # `rag ui`'s chainlit child, if still there
    if process.poll() is None:
        process.wait(timeout=grace)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Until ``url`` answers 200; the log's tail in the error if the process exits first."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`rag ui` exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = error
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:]
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last}):\n{tail}")


def start_ui(
    *, cwd: Path, env: Mapping[str, str], log: Path, port: int, rag: Path = RAG_BIN
) -> subprocess.Popen[bytes]:
    """`rag ui` on loopback ``port`` in its own process group, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(rag), "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@contextlib.contextmanager
def running_ui(
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    rag: Path = RAG_BIN,
    ready: str = "/",
    timeout: float = 60,
) -> Iterator[str]:
    """`rag ui` until the block ends; yields its base URL once ``ready`` answers."""
    port = free_port()
    process = start_ui(cwd=cwd, env=env, log=log, port=port, rag=rag)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}{ready}", process, log, timeout)
        yield url
    finally:
        stop_group(process)
