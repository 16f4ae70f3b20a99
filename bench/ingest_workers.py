"""Ingest scale-out: chunks/s of 1, 2 and 4 `rag ingest --shard K/N` workers, side by side.

One worker's pipeline is bound by its embedding requests in flight (``RAG_CONCURRENCY``)
times the API's latency; N workers on N machines (or pods of a Kubernetes Indexed Job,
see deploy/) each take a hash partition of the folder and multiply that, until the
embedding API or Milvus is the limit. Here every worker is a real `rag ingest` process,
started at once against the same ``milvus-lite server`` and the latency-injecting fake
embedding server (bench/services.py), and the wall time counts from the first start to
the last exit, start-up included, as a Job's would. All of it shares this machine's
cores, so beyond its core count the ratio shows this machine, not the design.

    python -m bench.ingest_workers [--quick] [--files 400] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pymilvus import MilvusClient

from bench import charts
from bench.report import RESULTS, publish, save_json
from bench.services import fake_openai, milvus_target

RAG_BIN = Path(sys.executable).parent / "rag"
SETTINGS = {  # per worker; the same for every run so only the number of workers changes
    "RAG_CHUNK_SIZE": "400",
    "RAG_CHUNK_OVERLAP": "40",
    "RAG_BATCH_SIZE": "16",
    "RAG_CONCURRENCY": "2",
    "RAG_EMBEDDING_DIMENSIONS": "384",
}


@dataclass(frozen=True)
class Result:
    workers: int
    chunks: int
    wall: float  # first start to last exit
    slowest_run: float  # the longest of the workers' own ingest seconds (no start-up)

    @property
    def rate(self) -> float:
        return self.chunks / self.wall if self.wall else 0.0

    @property
    def run_rate(self) -> float:
        """Chunks/s once the workers are up: what start-up costs hides on small folders."""
        return self.chunks / self.slowest_run if self.slowest_run else 0.0


def write_folder(root: Path, files: int) -> Path:
    """Files of 2-6 chunks of distinct text (the fake's vectors come from the words)."""
    for i in range(files):
        body = "\n\n".join(
            f"Section {j} of record {i}: unit {i}-{j} is serviced every {j + 3} weeks; its "
            f"torque is {i * 3 + j} Nm and the inspector signs form R-{i:04d}-{j}. " * 3
            for j in range(2 + i % 5)
        )
        path = root / f"part{i % 8}" / f"record-{i:04d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Record {i}\n\n{body}\n", encoding="utf-8")
    return root


def ingest_seconds(output: str) -> float:
    """The 'seconds' column of a run's summary table."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if "┃ added ┃" in line)
    values = next(line for line in lines[header + 1 :] if line.startswith("│"))
    return float(values.split("│")[-2])


def run_workers(folder: Path, count: int, env: dict[str, str], collection: str) -> Result:
    shards = [["--shard", f"{k}/{count}"] for k in range(1, count + 1)] if count > 1 else [[]]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [str(RAG_BIN), "ingest", str(folder), "--collection", collection, *shard],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for shard in shards
    ]
    outputs = [process.communicate()[0] for process in processes]
    wall = time.perf_counter() - started
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"a worker failed ({process.returncode}):\n{output}")
    client = MilvusClient(uri=env["RAG_MILVUS_URI"], timeout=30, dedicated=True)
    try:
        stats = client.get_collection_stats(collection)
    finally:
        client.close()
    return Result(count, int(stats["row_count"]), wall, max(map(ingest_seconds, outputs)))


def chart(results: list[Result], path: Path) -> Path:
    """Speed-up against one worker, with and without start-up, beside the ideal line."""
    fig, (ax,) = charts.figure(1, width=6.0, height=4.2)
    one = next((r for r in results if r.workers == 1), results[0])
    counts = [r.workers for r in results]
    charts.lines(
        ax,
        counts,
        {
            "after start-up": [r.run_rate / one.run_rate for r in results],
            "wall time, start-up included": [r.rate / one.rate for r in results],
            "ideal": [n / one.workers for n in counts],
        },
        xlabel="workers (rag ingest --shard K/N)",
        ylabel=f"chunks/s vs {one.workers} worker",
        title="Speed-up of N ingest workers on one Milvus",
        styles={"ideal": ":"},
    )
    return charts.save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="120 files")
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--jitter", type=float, default=0.05)
    args = parser.parse_args()
    files = 120 if args.quick else args.files
    counts = [int(n) for n in args.workers.split(",")]
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="rag-bench-workers-") as scratch,
        fake_openai(args.latency, args.jitter) as base_url,
        milvus_target("lite-server") as uri,
    ):
        assert uri is not None
        folder = write_folder(Path(scratch) / "docs", files)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
        env |= SETTINGS | {
            "RAG_MILVUS_URI": uri,
            "RAG_EMBEDDING_PROVIDER": "openai",
            "RAG_EMBEDDING_BASE_URL": base_url,
            "RAG_EMBEDDING_API_KEY": "bench",
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        for count in counts:
            results.append(run_workers(folder, count, env, f"workers_{count}"))
            print(f"{count} worker(s): {results[-1].rate:,.0f} chunks/s", flush=True)
    one = next((r for r in results if r.workers == 1), results[0])
    columns = ["workers", "chunks", "wall s", "chunks/s", f"vs {one.workers} worker",
               "slowest worker's ingest s", "chunks/s after start-up",
               f"vs {one.workers} worker (after start-up)"]  # fmt: skip
    rows = [[str(r.workers), f"{r.chunks:,}", f"{r.wall:.1f}", f"{r.rate:,.0f}",
             f"{r.rate / one.rate:.2f}×", f"{r.slowest_run:.1f}", f"{r.run_rate:,.0f}",
             f"{r.run_rate / one.run_rate:.2f}×"] for r in results]  # fmt: skip
    notes = [
        f"{files} files; per worker: batch {SETTINGS['RAG_BATCH_SIZE']}, concurrency "
        f"{SETTINGS['RAG_CONCURRENCY']}; fake embeddings {args.latency} s ± {args.jitter} s "
        "per request; one milvus-lite server. Wall time includes each process' start-up "
        f"(seconds of CPU each), and all workers share this machine's {os.cpu_count()} cores; "
        "'after start-up' divides by the slowest worker's own ingest time (its summary's "
        "seconds), what a folder large enough to dwarf start-up approaches.",
    ]
    save_json("ingest_workers", [
        {"workers": r.workers, "chunks": r.chunks, "wall_s": r.wall,
         "slowest_run_s": r.slowest_run, "chunks_per_s": r.rate,
         "chunks_per_s_after_start_up": r.run_rate} for r in results
    ])  # fmt: skip
    path = chart(results, RESULTS / "ingest_workers.png")
    publish("ingest_workers", "Ingest with N workers (rag ingest --shard K/N)", columns, rows,
            args.quick, notes, path)  # fmt: skip


if __name__ == "__main__":
    main()
