"""How every benchmark part reports, and the probes they share.

Reporting: a rich table on the terminal, the same table in Markdown under
bench/results/ with the command that produced it, and a chart beside it.

Probes: event-loop lag (a ticker task: if anything blocks the loop, the ticker
wakes late by that much) and CPU seconds per process of this process tree (the
client, the fake embedding server and Milvus Lite share the same cores, so a
stage measured alone may be CPU-bound rather than latency-bound), and the CPU
one chat costs this process (``first_token_cpu``).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rag.chain import Token

# Re-exported: the app applies it whenever it opens a Milvus Lite file; the benchmark
# parts also build clients themselves, so they apply it at start.
from rag.store.lite import tolerate_lite_keepalive  # noqa: F401

# Overridable so the smoke test in tests/ runs every part without touching the
# committed results.
RESULTS = Path(os.environ.get("RAG_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def publish(
    module: str,
    title: str,
    columns: list[str],
    rows: list[list[str]],
    quick: bool,
    notes: list[str] | None = None,
    chart: Path | None = None,
) -> None:
    """Print the table and write bench/results/<module>.md (notes and chart link below it)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    for note in notes or []:
        Console().print(note, markup=False)
    command = f"python -m bench.{module}" + (" --quick" if quick else "")
    lines = [f"## {title}", "", f"Command: `{command}`", "", *markdown_table(columns, rows)]
    if notes:
        lines += ["", *notes]
    if chart is not None:
        lines += ["", f"![{title}]({chart.name})"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{module}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass
class LoopLag:
    """How late a 10 ms ticker wakes: the longest time the event loop was blocked."""

    interval: float = 0.01
    lags: list[float] = field(default_factory=list)

    @property
    def max_ms(self) -> float:
        return max(self.lags, default=0.0) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.lags, 0.99) * 1000 if self.lags else 0.0

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, loop.time() - due))

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[LoopLag]:
        task = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _role(cmdline: str) -> str:
    if "bench.serving --worker" in cmdline:  # a replica of this process (bench/serving.py)
        return "client"
    if "fake_openai" in cmdline:
        return "embedding server"
    if "milvus" in cmdline:
        return "Milvus"
    return "other"


def process_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process and every descendant, by role.

    Linux /proc only; elsewhere just this process. Roles: 'client' (this process),
    'embedding server' (tests/support/fake_openai.py), 'Milvus' (milvus-lite's server), 'other'.
    """
    me = os.getpid()
    times = os.times()
    out = {"client": times.user + times.system}
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    for pid, seconds in cpu.items():
        ancestor, hops = parents.get(pid), 0
        while ancestor not in (None, 0, 1, me) and hops < 20:
            ancestor, hops = parents.get(ancestor), hops + 1
        if ancestor != me or pid == me:
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            role = _role(cmdline)
            out[role] = out.get(role, 0.0) + seconds
    return out


@dataclass
class CpuMeter:
    """CPU seconds per role and wall seconds between ``start()`` and ``stop()``."""

    started: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    _t0: float = 0.0

    def start(self) -> CpuMeter:
        self.started, self._t0 = process_cpu(), time.perf_counter()
        return self

    def stop(self) -> CpuMeter:
        ended, self.wall = process_cpu(), time.perf_counter() - self._t0
        self.used = {k: v - self.started.get(k, 0.0) for k, v in ended.items()}
        return self

    def cores(self, role: str) -> float:
        """Average cores busy for a role over the interval (1.0 = one core all the time)."""
        return self.used.get(role, 0.0) / self.wall if self.wall else 0.0

    @property
    def total_cores(self) -> float:
        return sum(self.used.values()) / self.wall if self.wall else 0.0


def save_json(module: str, data: object) -> Path:
    """bench/results/<module>.json: the figures behind the table, for the headline chart."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{module}.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def load_json(module: str) -> Any:
    """A part's saved figures, or None when that part has not run into RESULTS."""
    path = RESULTS / f"{module}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass
class Measured:
    thread_ms: float = 0.0  # event-loop thread, per chat, until the first token
    process_ms: float = 0.0  # every thread of this process, per chat, until the first token
    answer_ms: float = 0.0  # event-loop thread, per chat, the whole streamed answer

    def add(self, other: Measured, weight: float) -> None:
        self.thread_ms += other.thread_ms * weight
        self.process_ms += other.process_ms * weight
        self.answer_ms += other.answer_ms * weight


async def first_token_cpu(
    chain: Any,
    questions: list[str],
    chats: int,
    profiler: cProfile.Profile | None = None,
) -> Measured:
    """Average CPU of this process per chat until its first token, and for its whole answer;
    chats one at a time, so only this process' own work is counted (only the part before
    the first token is profiled). One GIL runs it for every chat, so N chats arriving
    together need about N times the loop thread's figure before the last one's first token:
    a floor under time to first token at load (``bench.serving``, ``bench.chat_cpu``)."""
    thread = process = answer = 0.0
    for i in range(chats):
        if profiler is not None:
            profiler.enable()
        started_thread, started_process = time.thread_time(), time.process_time()
        counting = True
        async for event in chain.astream(questions[i % len(questions)]):
            if counting and isinstance(event, Token):
                thread += time.thread_time() - started_thread
                process += time.process_time() - started_process
                counting = False
                if profiler is not None:
                    profiler.disable()
        answer += time.thread_time() - started_thread
    return Measured(thread / chats * 1000, process / chats * 1000, answer / chats * 1000)
