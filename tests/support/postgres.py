"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temp dir, ``pg_ctl`` start/stop.

The server binaries live in ``pg_config --bindir`` (Debian keeps them off PATH). ``initdb``
refuses to run as root, which is who runs the tests here, so as root the cluster belongs to
the ``postgres`` user and every command goes through ``runuser``. The server listens on
127.0.0.1 only, trusts local connections (user ``rag``, no password) and keeps its socket in
the temp dir, so nothing outside the test can see it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rag.local.server import free_port

USER = "rag"


def _bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(result.stdout.strip())
    return bindir if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file() else None


def unavailable_reason() -> str | None:
    """Why no cluster can be started here (for ``pytest.skip``), or None when one can."""
    if shutil.which("pg_config") is None:
        return "PostgreSQL is not installed (no pg_config; `make install-postgres` adds it)"
    if _bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found in `pg_config --bindir`"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb cannot drop to the postgres user"
    return None


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(
        _as_owner(command), capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stderr}\n{tail}")


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a fresh cluster; yields ``postgresql://rag@127.0.0.1:PORT/postgres``."""
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError(unavailable_reason() or "PostgreSQL is not available")
    root = Path(tempfile.mkdtemp(prefix="rag-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "db", root / "log"
    port = free_port()
    pg_ctl = str(bindir / "pg_ctl")
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
              "--no-sync", "-E", "UTF8"], "initdb")  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"],
             "pg_ctl start", log)  # fmt: skip
        try:
            yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        finally:
            _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop", log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
