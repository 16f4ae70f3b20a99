"""Every benchmark part runs at a tiny size, so bench/ can't rot (no timings asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PARTS = [
    ("bench.study", ["--targets", "lite", "--latency", "0.005", "--jitter", "0"], "study.md"),
    ("bench.ingest_scale", ["--sizes", "60", "--modes", "latency", "--latency", "0.005"],
     "ingest_scale.md"),
    ("bench.retrieval_latency", ["--sizes", "300"], "retrieval_latency.md"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("module", "args", "result"), PARTS)
def test_benchmark_part_runs(tmp_path: Path, module: str, args: list[str], result: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env["RAG_BENCH_RESULTS"] = str(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=230,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = (tmp_path / result).read_text(encoding="utf-8")
    assert "Command: `python -m " in table and table.count("\n|") >= 3, table
