"""A real Milvus 2.3 server for the tests: ``milvus-server`` from the PyPI package ``milvus``.

Milvus Lite (and ``milvus-lite server``) is a different engine from the Milvus users deploy;
the standalone server is the closest thing to it that runs without Docker, and it is old
(2.3.5), so it also shows how the app behaves on a server lacking newer features (BM25).

How to start and stop it lives in ``bench/services.py`` (one copy for the benchmarks and
the tests); this module adds what pytest needs. Use the fixture by importing it into a
test module::

    from tests.support.milvus_standalone import milvus_standalone  # noqa: F401 - a fixture
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import milvus_standalone as _run_standalone
from bench.services import standalone_missing

__all__ = ["milvus_standalone", "standalone_missing", "standalone_server"]


@contextlib.contextmanager
def standalone_server(folder: Path) -> Iterator[str]:
    """Start milvus-server with its data in ``folder``, wait until it answers, stop it
    (its whole process group) on exit; yields ``http://127.0.0.1:PORT``.

    Skips the calling test when the package is not installed, so a checkout without the
    optional server still runs everything else.
    """
    reason = standalone_missing()
    if reason:
        pytest.skip(reason)
    with _run_standalone(folder) as uri:
        yield uri


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One milvus-server for the whole session: it takes seconds to start, and 2 cores."""
    with standalone_server(tmp_path_factory.mktemp("milvus-standalone")) as uri:
        yield uri
