"""Part 3: ingest throughput at scale, against each stage measured alone.

For a synthetic folder of N chunks it measures, in one run, with the same server,
batch size and concurrency: the embedding stage alone (``aembed_documents``, as many
calls in flight as the pipeline's embedders), Milvus writes alone (``aadd_embeddings``
of precomputed float32 vectors from as many tasks as the pipeline's writers, then the
flush that ends every run; also with ``concurrency`` tasks, to show two writers lose
nothing), the prepare stage alone
(discover, hash, load, split, the Milvus look-ups; writes are no-ops) and the whole
pipeline. Goal: the pipeline within 10% of its slowest stage (ratio >= 0.9), i.e. the
stages overlap instead of adding up.

It also records, because the stages share this machine's cores, CPU seconds of every
process per phase: this client, the embedding server, and Milvus when it runs apart.
milvus-lite 3 (target ``lite``) is pure Python threads *inside* this process, so its
work counts as the client's and shares the client's GIL; ``lite-server`` runs the same
engine in its own process, as a deployed Milvus would.

Embedding modes:
- ``latency``: tests/support/fake_openai.py as is; it computes hashed bag-of-words vectors,
  about 1 ms of its CPU per chunk, on the same cores as the client;
- ``remote``: the same server with near-free vectors, as a remote API whose compute
  is elsewhere: only latency (and the client's own work) remains;
- ``local``: the bundled ONNX model in this process.

Earlier runs of this benchmark found why the pipeline once ran at 0.05-0.7x of its
slowest stage, by monkeypatching it, and the pipeline has since adopted each fix: one
look-up of the stored sources per run instead of one per file, separate embed and write
stages instead of one ``aadd_documents`` per task, and batches filled to exactly
batch_size. A rate-limit check (``--rpm``, on in --quick) runs the pipeline against an
endpoint that answers 429 over a requests-per-minute quota.

The full run takes every size with ``remote`` on ``lite-server`` and up to 10,000 chunks
on ``lite``; ``latency`` (up to 10,000 chunks) and ``local`` (up to 1,000) run on ``lite``
only: they measure the embedding side (FULL_MAX says why).

    python -m bench.ingest_scale [--quick] [--sizes 1000,10000,100000] [--modes ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from bench import charts
from bench.report import (
    RESULTS,
    CpuMeter,
    LoopLag,
    markdown_table,
    publish,
    save_json,
    tolerate_lite_keepalive,
)
from bench.services import ROOT, _process, fake_openai, free_port, milvus_target
from ingest.pipeline import WRITERS, Pipeline, _Batch, ingest_path
from ingest.split import Splitter
from rag.config import Settings, load_settings
from rag.services import Services, open_services
from rag.store.schema import chunk_metadata

CHUNKS_PER_FILE = 20
REMOTE_CONCURRENCY = 8
WORDS = (  # noqa: SIM905 - a word string reads better than a 33-line literal
    "drone battery flight policy approval invoice warranty pilot station charging route "
    "weather firmware sensor motor payload customer range altitude telemetry incident report "
    "travel expense manager finance security password network office parcel medical cold"
).split()
# The fake server with its per-text vector replaced by one of 256 fixed unit vectors
# picked by a CRC of the text: microseconds instead of ~1 ms of Python per chunk.
CHEAP_SERVER = """
import sys, zlib
sys.path.insert(0, sys.argv.pop(1))
import numpy as np
import fake_openai
_rng = np.random.default_rng(0)
_table = {}
def embed_text(text, dim, trigram_weight=0.5):
    vectors = _table.get(dim)
    if vectors is None:
        m = _rng.normal(size=(256, dim))
        vectors = _table[dim] = (m / np.linalg.norm(m, axis=1, keepdims=True)).tolist()
    return vectors[zlib.crc32(text.encode()) & 255]
fake_openai.embed_text = embed_text
fake_openai.main(sys.argv[1:])
"""
STAGES = ("embed", "insert", "prepare")
RPM_QUICK = 3  # requests per RPM_QUICK_WINDOW seconds in the quick run's rate-limit check ...
RPM_QUICK_WINDOW = 5.0  # a minute's quota scaled down, so --quick stays quick
RPM_CHUNKS = 300  # ... over this many chunks: 5 or 6 requests, so the limit trips
PHASES = (*STAGES, "insert_wide", "pipeline")


# Largest size per (mode, target) in the full run, so `rag bench` ends within its 30
# minutes: the bundled model embeds ~37 chunks/s here (100k chunks would take 45 min per
# phase) and the hashing fake server costs ~1 ms of CPU per chunk, so both are their own
# bottleneck at any size; Milvus Lite in this process shares its GIL with the client at
# any size too. 100k chunks run where Milvus has its own process, as a deployment would.
FULL_MAX = {("local", "lite"): 1000, ("latency", "lite"): 10000, ("remote", "lite"): 10000}


def capped(mode: str, target: str, sizes: list[int]) -> list[int]:
    return sorted({min(n, FULL_MAX.get((mode, target), n)) for n in sizes})


def make_corpus(folder: Path, chunks: int, chunk_size: int) -> None:
    """Files of about CHUNKS_PER_FILE chunks each, deterministic text."""
    rng = random.Random(7)
    files = max(1, chunks // CHUNKS_PER_FILE)
    per_file = chunks // files
    for f in range(files):
        paragraphs = []
        for c in range(per_file):
            words = [rng.choice(WORDS) for _ in range(chunk_size // 9)]
            paragraphs.append(f"Section {f}-{c}. " + " ".join(words) + ".")
        (folder / f"doc_{f:05d}.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")


async def bounded(factories: list[Callable[[], Awaitable[object]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def run(factory: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await factory()

    await asyncio.gather(*(run(f) for f in factories))


def chunk_texts(splitter: Splitter, folder: Path) -> list[str]:
    """Blocking: the chunks the pipeline will write, to feed the stages measured alone."""
    from ingest.loaders import load

    return [c.text for p in sorted(folder.iterdir()) for c in splitter.chunks(load(p, 1 << 40))]


@dataclass
class CallTimer:
    """Seconds spent inside wrapped calls (summed over concurrent calls)."""

    seconds: float = 0.0
    calls: int = 0

    def wrap(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


class TimedEmbeddings(Embeddings):
    """Delegates to the real model, timing the async batch calls the pipeline makes."""

    def __init__(self, inner: Embeddings, timer: CallTimer) -> None:
        self.inner, self.timer = inner, timer

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.timer.wrap(self.inner.aembed_documents)(texts)


class PrepareOnly(Pipeline):
    """The pipeline with embedding and writes that do nothing: discover, hash, load, split,
    look up."""

    async def _embed(self, documents: list[Document]) -> list[np.ndarray]:
        return []

    async def _write(self, batch: _Batch) -> None:
        return None


def metadata_rows(count: int) -> tuple[list[dict[str, object]], list[str]]:
    """Metadata shaped like the pipeline's (same fields) for the writes-alone stage."""
    rows = [
        chunk_metadata(
            source="bench.txt",
            title="bench",
            section="",
            page=None,
            index=i,
            total=count,
            text="x",
            file_hash="y" * 16,
            file_size=1,
            ingested_at="now",
        )
        for i in range(count)
    ]
    return rows, [f"p{i}" for i in range(count)]


def peak_rss_reset() -> None:
    """Linux: restart this process' peak-RSS counter, so each run reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Result:
    mode: str
    target: str
    chunks: int
    seconds: dict[str, float] = field(default_factory=dict)  # per stage and "pipeline"
    cpu: dict[str, CpuMeter] = field(default_factory=dict)
    embed_share: float = 0.0  # of writer-seconds in the pipeline
    insert_share: float = 0.0
    loop_lag_ms: float = 0.0
    rss_mb: float = 0.0
    ok: bool = True

    @property
    def label(self) -> str:
        return f"{self.mode} @ {self.target}"

    def rate(self, phase: str) -> float:
        return self.chunks / self.seconds[phase]

    @property
    def slowest(self) -> str:
        return max(STAGES, key=lambda s: self.seconds[s])

    @property
    def vs_slowest(self) -> float:
        """Pipeline rate / slowest stage's rate; the goal is >= 0.9."""
        return self.seconds[self.slowest] / self.seconds["pipeline"]

    @property
    def client_cpu_floor(self) -> float:
        """Seconds the pipeline needs at least for the CPU its stages used in this process.

        Python work in one process runs one thread at a time (the GIL), and milvus-lite
        3 runs inside this process: so the stages' client CPU adds up, however well
        they overlap in wall time. (On a shared machine, the cores we get may be fewer.)
        """
        return sum(self.cpu[s].used.get("client", 0.0) for s in STAGES)

    @property
    def vs_bound(self) -> float:
        """Pipeline rate against the best it can do: max(slowest stage, client CPU floor)."""
        bound = max(self.seconds[self.slowest], self.client_cpu_floor)
        return bound / self.seconds["pipeline"]

    @property
    def vs_serial(self) -> float:
        """Speed-up over running the stages one after another."""
        return sum(self.seconds[s] for s in STAGES) / self.seconds["pipeline"]


async def measure(settings: Settings, folder: Path, mode: str, target: str) -> Result:
    splitter = Splitter(settings.chunk_size, settings.chunk_overlap)
    texts = await asyncio.to_thread(chunk_texts, splitter, folder)
    result = Result(mode, target, len(texts))
    size, limit = settings.batch_size, settings.concurrency
    services = await open_services(settings)

    async def phase(name: str, work: Callable[[], Awaitable[object]]) -> None:
        meter = CpuMeter().start()
        await work()
        result.cpu[name] = meter.stop()
        result.seconds[name] = meter.wall

    batches = [texts[i : i + size] for i in range(0, len(texts), size)]
    embed = services.embeddings.aembed_documents
    await phase("embed", lambda: bounded([lambda b=b: embed(b) for b in batches], limit))

    dim = len(await services.embeddings.aembed_query("probe"))
    matrix = np.random.default_rng(0).normal(size=(len(texts), dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rows = list(matrix)
    metadatas, ids = metadata_rows(len(texts))
    for name, tasks in (("insert", WRITERS), ("insert_wide", limit)):
        probe = await open_services(settings, collection=f"{name}_probe", recreate=True)
        add = probe.store.aadd_embeddings
        writes = [lambda i=i, add=add: add(texts[i : i + size], rows[i : i + size],
                                           metadatas[i : i + size], ids=ids[i : i + size])
                  for i in range(0, len(texts), size)]  # fmt: skip

        async def write_all(writes=writes, tasks=tasks, store=probe.store) -> None:
            await bounded(writes, tasks)
            await store.aclient.flush(store.collection_name)  # as the pipeline ends its run

        await phase(name, write_all)

    empty = await open_services(settings, collection="prepare_probe", recreate=True)
    await phase("prepare", lambda: PrepareOnly(empty.store, settings).run(folder))

    report = await timed_pipeline(services, settings, folder, result)
    result.ok = report.ok and report.chunks_written == len(texts)
    return result


async def timed_pipeline(
    services: Services, settings: Settings, folder: Path, result: Result
) -> Any:
    """The real pipeline, with its embedding and insert calls timed and the loop watched."""
    store = services.store
    embed_timer, insert_timer = CallTimer(), CallTimer()
    store.embedding_func = TimedEmbeddings(store.embedding_func, embed_timer)
    store.aclient.insert = insert_timer.wrap(store.aclient.insert)  # type: ignore[method-assign]
    meter = CpuMeter().start()
    async with LoopLag().watch() as lag:
        report = await ingest_path(folder, store, settings)
    result.cpu["pipeline"] = meter.stop()
    result.seconds["pipeline"] = meter.wall
    result.embed_share = embed_timer.seconds / (meter.wall * settings.concurrency)
    result.insert_share = insert_timer.seconds / (meter.wall * WRITERS)
    result.loop_lag_ms = lag.max_ms
    return report


@contextlib.contextmanager
def embedding_server(mode: str, latency: float) -> Iterator[str | None]:
    """The base URL for a mode: the fake as is, the cheap-vector fake, or None (local)."""
    if mode == "latency":
        with fake_openai(latency, latency / 4) as url:
            yield url
    elif mode == "remote":
        port = free_port()
        support = str(ROOT / "tests" / "support")
        command = [sys.executable, "-c", CHEAP_SERVER, support, "--port", str(port),
                   "--embed-latency", str(latency), "--embed-jitter", str(latency / 4)]  # fmt: skip
        with _process(command, port):
            yield f"http://127.0.0.1:{port}/v1"
    else:
        yield None


async def run(mode: str, target: str, sizes: list[int], latency: float) -> list[Result]:
    out = []
    with embedding_server(mode, latency) as base_url:
        for size in sizes:
            work = Path(tempfile.mkdtemp(prefix="rag-scale-"))
            try:
                with milvus_target(target) as uri:
                    if uri is None:
                        continue
                    out.append(await run_one(mode, target, size, latency, base_url, uri, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return out


async def run_one(
    mode: str, target: str, size: int, latency: float, base_url: str | None, uri: str, work: Path
) -> Result:
    corpus = work / "corpus"
    corpus.mkdir()
    # The stages alone call Milvus without the pipeline's retries, and one insert into a
    # `milvus-lite server` holding ~50k rows once took over the default 10 s (seen here:
    # "[insert_rows] Retry timeout: 10.0s" ended a 100k-chunk run): a minute per call.
    overrides: dict[str, object] = {
        "milvus_uri": uri, "collection": "scale", "milvus_timeout": 60.0,
    }  # fmt: skip
    if base_url:
        overrides |= {"embedding_provider": "openai", "embedding_base_url": base_url,
                          "embedding_dimensions": 384,
                          "concurrency": REMOTE_CONCURRENCY}  # fmt: skip
    settings = load_settings(**overrides)
    make_corpus(corpus, size, settings.chunk_size)
    peak_rss_reset()
    result = await measure(settings, corpus, mode, target)
    result.rss_mb = peak_rss_mb()
    return result


async def rate_limited(
    chunks: int, rpm: int, latency: float, window: float = 60.0
) -> dict[str, object]:
    """The pipeline alone against an endpoint allowing ``rpm`` requests per ``window`` s.

    The fake server counts requests in a sliding 60 s window and, over the quota,
    answers 429 with a Retry-After saying when the oldest request leaves the window
    (``--retry-after`` on the server sends a fixed value instead): the goal is that the
    pipeline slows down and finishes rather than failing.
    """
    work = Path(tempfile.mkdtemp(prefix="rag-rpm-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        with fake_openai(latency, latency / 4, rpm=rpm, rate_window=window) as base_url:
            settings = load_settings(
                milvus_uri=str(work / "m.db"), collection="rpm", embedding_provider="openai",
                embedding_base_url=base_url, embedding_dimensions=384,
                concurrency=REMOTE_CONCURRENCY,
            )  # fmt: skip
            make_corpus(corpus, chunks, settings.chunk_size)
            services = await open_services(settings)
            started = time.perf_counter()
            try:
                report = await ingest_path(corpus, services.store, settings)
                outcome = "finished" if report.ok else "files failed"
                written = report.chunks_written
            except Exception as error:
                outcome = f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
                written = -1
            seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    requests = -(-chunks // settings.batch_size)
    return {"chunks": chunks, "rpm": rpm, "window": window, "requests": requests,
            "seconds": seconds,
            "written": written, "outcome": outcome,
            "ok": outcome == "finished" and written == chunks}  # fmt: skip


def cpu_rows(results: list[Result]) -> list[list[str]]:
    """Cores busy per process and phase: shows which phases are CPU-bound on this box."""
    rows = []
    for r in results:
        for phase in PHASES:
            m = r.cpu[phase]
            cores = [m.cores(role) for role in ("client", "embedding server", "Milvus")]
            rows.append([r.label, f"{r.chunks:,}", phase, f"{m.wall:.2f}",
                         *(f"{c:.2f}" for c in cores), f"{m.total_cores:.2f}"])  # fmt: skip
    return rows


def chart(results: list[Result], path: Path) -> Path:
    """Bars of chunks/s per stage alone and the pipeline, one group per mode and size."""
    fig, (ax,) = charts.figure(1, width=max(7.5, 2.2 * len(results)), height=4.6)
    groups = [f"{r.mode} @ {r.target}\n{r.chunks:,} chunks\n{r.vs_slowest:.2f}× slowest"
              for r in results]  # fmt: skip
    series = {
        "embed alone": [r.rate("embed") for r in results],
        f"Milvus writes alone ({WRITERS} tasks, as the pipeline)": [
            r.rate("insert") for r in results
        ],
        "Milvus writes alone (concurrency tasks)": [r.rate("insert_wide") for r in results],
        "prepare alone": [r.rate("prepare") for r in results],
        "pipeline": [r.rate("pipeline") for r in results],
    }
    title = "Ingest: each stage alone vs the whole pipeline (same batch size, concurrency)"
    charts.bars(ax, groups, series, ylabel="chunks per second (log)", log=True, fmt="{:,.0f}",
                title=title)  # fmt: skip
    return charts.save(fig, path)


def main() -> None:
    tolerate_lite_keepalive()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 chunks; 100 local")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--modes", default="latency,remote,local")
    parser.add_argument("--targets", default="lite,lite-server", help="Milvus: lite, lite-server")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--rpm", type=int, default=None, help="rate limit of the fake server")
    parser.add_argument(
        "--rate-window",
        type=float,
        default=None,
        help="seconds the --rpm quota counts over (60; 5 in --quick)",
    )
    args = parser.parse_args()
    if args.quick:
        # One run per question: the latency server against its slowest stage, the same
        # with Milvus in its own process, the bundled model (the full run scales them).
        plan = [("latency", "lite", [1000]), ("remote", "lite-server", [1000]),
                ("local", "lite", [100])]  # fmt: skip
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
        plan = [(m, t, capped(m, t, sizes))
                for m in args.modes.split(",") for t in args.targets.split(",")
                if m == "remote" or t == "lite"]  # fmt: skip
    results = []
    for mode, target, sizes in plan:
        results += asyncio.run(run(mode, target, sizes, args.latency))
    rpm = args.rpm or (RPM_QUICK if args.quick else None)
    window = args.rate_window or (RPM_QUICK_WINDOW if args.quick else 60.0)
    limited = asyncio.run(rate_limited(RPM_CHUNKS, rpm, args.latency, window)) if rpm else None
    rows = []
    for r in results:
        rates = [f"{r.rate(p):,.0f}" for p in ("embed", "insert", "insert_wide", "prepare",
                                               "pipeline")]  # fmt: skip
        rows.append([r.label, f"{r.chunks:,}", *rates, f"{r.vs_slowest:.2f} ({r.slowest})",
                     f"{r.client_cpu_floor:.2f} s → {r.vs_bound:.2f}", f"{r.vs_serial:.2f}×",
                     f"{r.embed_share:.0%} / {r.insert_share:.0%}",
                     f"{r.loop_lag_ms:.0f}", f"{r.rss_mb:,.0f}",
                     "yes" if r.ok else "FAILED"])  # fmt: skip
    columns = ["embeddings @ Milvus", "chunks", "embed alone /s",
               f"writes alone /s ({WRITERS} tasks)", "writes alone /s (concurrency tasks)",
               "prepare alone /s", "pipeline /s", "pipeline / slowest stage",
               "client CPU of stages → pipeline / max(slowest, CPU)", "pipeline vs serial stages",
               "busy: embedders / writers", "max loop lag ms", "peak RSS MB", "ok"]  # fmt: skip
    cpu_columns = ["embeddings @ Milvus", "chunks", "phase", "wall s", "client cores",
                   "embedding server cores", "Milvus cores", "total cores"]  # fmt: skip
    notes = [
        "Goal: pipeline / slowest stage >= 0.90. 'vs serial stages' = (sum of the three "
        "stage times) / pipeline time. 'Client CPU of stages': CPU seconds this process "
        "spent in the three stages alone (milvus-lite 3 runs in it); one GIL means the "
        "pipeline cannot take less, so the second ratio compares it with max(slowest stage, "
        "that). 'Prepare alone' runs against an empty collection, so "
        "it does not see the per-file look-ups grow. Busy = seconds inside embedding calls "
        "over (pipeline wall x embedders), and inside inserts over (wall x writers). "
        "The pipeline runs `concurrency` embedders and "
        f"{WRITERS} writers; the slowest stage is the slowest of embed, writes with "
        f"{WRITERS} tasks and prepare. Concurrency "
        f"{REMOTE_CONCURRENCY} for the fake server modes, the default otherwise; "
        f"latency {args.latency} s ± {args.latency / 4:.2f} s per embedding request" + ".",
        *rate_limit_notes(limited),
        "",
        "CPU used per process and phase (cores busy on average; this machine has "
        f"{_cpus()} cores, shared with other work):",
        "",
        *markdown_table(cpu_columns, cpu_rows(results)),
    ]
    path = chart(results, RESULTS / "ingest_scale.png")
    save_json("ingest_scale_rate_limit", limited)
    save_json("ingest_scale", [
        {"mode": r.mode, "target": r.target, "chunks": r.chunks,
         "rates": {p: r.rate(p) for p in PHASES}, "slowest": r.slowest,
         "vs_slowest": r.vs_slowest, "client_cpu_floor_s": r.client_cpu_floor,
         "vs_bound": r.vs_bound,
         "vs_serial": r.vs_serial, "loop_lag_max_ms": r.loop_lag_ms, "ok": r.ok}
        for r in results
    ])  # fmt: skip
    publish("ingest_scale", "Ingest throughput (chunks/s): stages alone vs the pipeline",
            columns, rows, args.quick, notes, path)  # fmt: skip
    if not all(r.ok for r in results):
        sys.exit(1)


def rate_limit_notes(limited: dict[str, object] | None) -> list[str]:
    """The 429 check's table, or nothing when it did not run."""
    if limited is None:
        return []
    window = float(limited.get("window", 60.0))  # type: ignore[arg-type]
    row = [f"{limited['chunks']:,}", f"{limited['rpm']} per {window:g} s",
           f"~{limited['requests']}", f"{float(limited['seconds']):.1f}",
           str(limited["outcome"])]  # fmt: skip
    return [
        "",
        "Rate limit: the pipeline alone against the fake endpoint limited to a number of "
        "requests per sliding window (a minute in real APIs; shorter in --quick); over it, "
        "429 with a Retry-After saying when a request frees up. "
        "Goal: it slows down, never fails.",
        "",
        *markdown_table(["chunks", "requests allowed", "requests needed", "seconds",
                         "outcome"], [row]),
    ]  # fmt: skip


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
