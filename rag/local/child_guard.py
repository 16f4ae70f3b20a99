"""Run a Python module as a child that exits when its parent dies, however it dies.

Why: a model server started by `rag ui`, `rag ask` or the test suite must never outlive
them. ``stop()`` in a ``finally`` covers normal exits and exceptions, but not SIGKILL, an
OOM kill or a crashed interpreter; then the server is re-parented to PID 1 and keeps its
port and a gigabyte of memory. Linux's parent-death signal (``PR_SET_PDEATHSIG``) is not
enough either: it fires when the *thread* that forked exits, and the app starts servers
from worker threads (``asyncio.to_thread``). A pipe is exact: the parent keeps the only
write end, the kernel closes it when the parent process ends for any reason, and the read
end in the child then sees end-of-file.

Usage (what ``spawn_guarded`` builds)::

    python -m rag.local.child_guard FD MODULE [ARGS...]
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any


def _exit_when_closed(fd: int) -> None:
    """Block until the parent's end of the pipe is closed, then end this process at once."""
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:  # pragma: no cover - retried by Python since 3.5
            continue
        except OSError:
            break
    # os._exit: no clean-up handlers, which might block on the very work we are abandoning;
    # the kernel frees the port and memory.
    os._exit(0)


def spawn_guarded(
    module: str,
    args: Sequence[str],
    *,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``python -m module args`` guarded by a pipe; returns the process and the write
    end, which the caller keeps open for the child's lifetime and closes after stopping it.

    The write end is not inheritable (``os.pipe`` makes both ends close-on-exec), so other
    children this process starts later cannot keep a server alive by holding it.
    """
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "rag.local.child_guard", str(read_end), module, *args],
            stdout=stdout,
            stderr=stderr,
            env=env,
            pass_fds=(read_end,),
            start_new_session=True,  # its own group: stop() signals the server and its workers
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return process, write_end


def main(argv: Sequence[str]) -> None:
    fd, module, *rest = argv
    threading.Thread(target=_exit_when_closed, args=(int(fd),), daemon=True).start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
