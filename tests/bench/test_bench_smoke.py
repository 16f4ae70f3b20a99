"""Every benchmark part runs at a tiny size, so bench/ can't rot (no timings asserted).

Each part must write its Markdown table, its chart (a real PNG, linked from the
Markdown) and its figures as JSON; the headline chart is then drawn from those.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PARTS = [
    ("bench.study", ["--targets", "lite", "--latency", "0.005", "--jitter", "0", "--sizes", "10",
                     "--ingest-sizes", "30"], "study"),
    ("bench.ingest_scale", ["--sizes", "60", "--modes", "latency", "--targets", "lite",
                            "--latency", "0.005"], "ingest_scale"),
    ("bench.serving", ["--quick", "--modes", "remote@lite,remote@lite-server×2", "--levels", "1,4",
                       "--token-delay", "0.001"], "serving"),
    ("bench.retrieval_latency", ["--sizes", "300"], "retrieval_latency"),
    ("bench.ingest_workers", ["--files", "20", "--workers", "1,2", "--latency", "0.005"],
     "ingest_workers"),
]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder for the module, so the headline test sees every part's figures."""
    return tmp_path_factory.mktemp("bench-results")


def run_bench(results: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env["RAG_BENCH_RESULTS"] = str(results)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, f"{path.name} is not a chart"


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("module", "args", "name"), PARTS)
def test_benchmark_part_runs(results: Path, module: str, args: list[str], name: str) -> None:
    run = run_bench(results, module, *args)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = (results / f"{name}.md").read_text(encoding="utf-8")
    assert "Command: `python -m " in table and table.count("\n|") >= 3, table
    if name == "study":  # the scaled-up add: naive gather vs the project, no sync loop
        assert "| ingest | 30 | — |" in table, table
    assert (results / f"{name}.json").is_file()
    assert f"]({name}.png)" in table, "the Markdown does not show its chart"
    assert_png(results / f"{name}.png")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_headline_chart(results: Path) -> None:
    if not all((results / f"{name}.json").is_file() for *_, name in PARTS):
        pytest.skip("runs after the parts above, from their figures")
    run = run_bench(results, "bench", "--headline")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert_png(results / "headline.png")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chat_cpu_compares_the_two_client_setups(results: Path) -> None:
    run = run_bench(results, "bench.chat_cpu", "--chats", "5", "--milvus", "lite")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    for setup in ("sdk+httpx", "dicts+aiohttp"):
        assert f"\n{setup} " in run.stdout, run.stdout
    assert "ratio dicts+aiohttp / sdk+httpx: first token" in run.stdout, run.stdout
    assert "Unclosed" not in run.stderr, "an HTTP client was left open: " + run.stderr[-2000:]
