"""Loopback services for benchmarks: the latency-injecting embeddings server and Milvus targets.

Each runs as its own process, so the benchmark's event loop measures only the
client side, as it would against a remote API and a remote Milvus.

The tests start the same Milvus servers through this module (``milvus_standalone``),
so there is one copy of how to run them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rag.local.server import free_port, stop_process_group

ROOT = Path(__file__).resolve().parent.parent
# Every port option of `milvus-server --help`. Each option is only where the wrapper
# *starts scanning* for a free port, from fixed defaults (19530, 53100, ...), and it
# releases its probe sockets seconds before milvus binds them; two servers starting
# together would pick the same ports, so each gets a port the OS just handed out.
STANDALONE_PORT_OPTIONS = (
    "etcd", "root-coord", "proxy", "proxy-internal", "query-coord", "query-node",
    "index-coord", "index-node", "data-coord", "data-node",
)  # fmt: skip
# milvus-server itself: the package's main(), with the metrics/health port (which it
# otherwise scans for from 9091, and has no option for) moved to a port we chose.
STANDALONE_LAUNCHER = (
    "import sys, milvus; "
    "milvus.default_server.webservice_port = int(sys.argv.pop(1)); "
    "sys.argv[0] = 'milvus-server'; "
    "sys.exit(milvus.main())"
)
# Milvus 2.3 writes server_id_<pid> here whatever TMPDIR says, and never removes it.
SERVER_ID_DIR = Path("/tmp/milvus")
STANDALONE_MISSING = (
    "milvus-server is not installed (the PyPI package `milvus`, a Milvus 2.3 standalone "
    "without Docker): pip install milvus==2.3.5"
)


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"service on port {port} did not start in {timeout:.0f} s")


def wait_for_milvus(uri: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until the server answers a real call: its gRPC port opens well before the
    coordinators are up, and an early request fails with 'service not ready'."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Milvus at {uri} exited with {process.returncode}")
        try:
            # dedicated: pymilvus 3 shares one connection per address, and a shared one
            # made here would keep its channel options for every later client.
            client = MilvusClient(uri=uri, timeout=2, dedicated=True)
            try:
                client.list_collections()
                return
            finally:
                client.close()
        except Exception as error:  # not listening, or listening but not ready yet
            last = error
            time.sleep(0.25)
    raise TimeoutError(f"Milvus at {uri} not ready after {timeout:.0f} s: {last}")


def stop_group(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    """Stop a process group and wait until *every* member is gone.

    milvus-server's Python wrapper dies at once on SIGTERM while the milvus binary it
    started (same group, same SIGTERM) is still shutting down and holding its ports,
    so waiting for the group leader alone would free the data folder and ports too early.
    """
    stop_process_group(process, grace)
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        time.sleep(0.1)


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
    latency: float,
    jitter: float,
    rpm: int | None = None,
    chat_token_delay: float = 0.0,
    chat_first_token_delay: float = 0.0,
    rate_window: float = 60.0,
) -> Iterator[str]:
    """The tests' fake OpenAI server with per-request latency; yields its base URL."""
    port = free_port()
    script = ROOT / "tests" / "support" / "fake_openai.py"
    command = [sys.executable, str(script), "--port", str(port),
               "--embed-latency", str(latency), "--embed-jitter", str(jitter),
               "--chat-token-delay", str(chat_token_delay),
               "--chat-first-token-delay", str(chat_first_token_delay)]  # fmt: skip
    if rpm:
        command += ["--rpm", str(rpm), "--rate-window", str(rate_window)]
    with _process(command, port):
        yield f"http://127.0.0.1:{port}/v1"


def standalone_missing() -> str | None:
    """Why milvus-server cannot run here, or None when it can."""
    spec = importlib.util.find_spec("milvus")
    if spec is None or spec.origin is None:
        return STANDALONE_MISSING
    if not (Path(spec.origin).parent / "data" / "config.yaml.template").is_file():
        return f"the installed `milvus` module is not the server package; {STANDALONE_MISSING}"
    return None


def _standalone_binaries() -> Path:
    """The milvus binary and its libraries, unpacked once per machine and version.

    milvus-server unpacks its binary and libraries (250 MB, from .lzma) into ``<data>/bin``
    at every start, about 6 s of a core, unless that folder already holds them with
    matching .md5 files; so each fresh data folder links to this one unpacked copy.
    """
    import milvus

    cache = Path(tempfile.gettempdir()) / f"rag-milvus-server-{milvus.__version__}"
    if not (cache / "bin" / "milvus").is_file():
        staging = Path(tempfile.mkdtemp(prefix=f"{cache.name}.", dir=cache.parent))
        try:
            milvus._initialize_data_files(str(staging))  # complete once it returns
            with contextlib.suppress(OSError):  # another process may have won the race
                staging.rename(cache)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return cache / "bin"


@contextlib.contextmanager
def milvus_standalone(folder: Path, timeout: float = 180) -> Iterator[str]:
    """Run milvus-server (Milvus 2.3 standalone) with its data in ``folder``; yields its URI.

    Every listener is on a port picked just now, so servers can run side by side and next
    to a developer's own Milvus. The embedded etcd has no port option at all (it listens on
    2379/2380 whatever ``--etcd-port`` says); Milvus reads an etcd config file named by
    ETCD_CONFIG_PATH, which moves it. Milvus' gRPC and metrics listeners bind every
    interface, not only loopback (2.3 has no setting for that).
    """
    reason = standalone_missing()
    if reason:
        raise RuntimeError(reason)
    folder = folder.resolve()
    base = folder / "milvus"
    base.mkdir(parents=True, exist_ok=True)
    if not (base / "bin").exists():
        (base / "bin").symlink_to(_standalone_binaries(), target_is_directory=True)
    ports = {option: free_port() for option in STANDALONE_PORT_OPTIONS}
    peer_port = free_port()
    client_url, peer_url = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{peer_port}"
    etcd_config = folder / "embed-etcd.yaml"
    etcd_config.write_text(
        f"name: default\nlisten-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
        f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
        f"initial-cluster: default={peer_url}\n",
        encoding="utf-8",
    )
    command = [sys.executable, "-c", STANDALONE_LAUNCHER, str(free_port()), "--data", str(base)]
    for option, port in ports.items():
        command += [f"--{option}-port", str(port)]
    # Milvus reads any setting from the environment (dots and case dropped). On SIGTERM
    # its query node otherwise waits (longer than our 15 s grace) to hand its loaded
    # segments to another query node, which a standalone never has; with 0 it stops in ~2 s.
    env = dict(os.environ, ETCD_CONFIG_PATH=str(etcd_config), QUERYNODE_GRACEFULSTOPTIMEOUT="0")
    uri = f"http://127.0.0.1:{ports['proxy']}"
    with (folder / "milvus-server.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            try:
                wait_for_milvus(uri, process, timeout)
            except (RuntimeError, TimeoutError) as error:
                tail = _log_tail(base / "logs" / "milvus-stderr.log", folder / "milvus-server.log")
                raise RuntimeError(f"milvus-server did not start: {error}\n{tail}") from None
            yield uri
        finally:
            members = _group_members(process.pid)
            stop_group(process)
            for pid in members:
                (SERVER_ID_DIR / f"server_id_{pid}").unlink(missing_ok=True)


def _group_members(pgid: int) -> list[int]:
    """Pids in a process group (Linux /proc; empty elsewhere)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def _log_tail(*paths: Path, lines: int = 20) -> str:
    """The last lines of each log, so a failed start explains itself."""
    parts = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(parts)


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
            if standalone_missing():
                yield None
                return
            with milvus_standalone(folder) as uri:
                yield uri
        else:
            raise ValueError(kind)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
