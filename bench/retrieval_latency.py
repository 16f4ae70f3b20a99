"""Part 5: search latency against collection size on Milvus Lite, before and after a flush.

Milvus Lite searches rows that are not yet flushed by brute force, so the same
collection answers much faster once flushed; the ingest pipeline flushes at its
end for that reason. Vectors are random and normalised (384 dimensions), written
straight through the client so the measurement is only about search.

    python -m bench.retrieval_latency [--quick] [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import charts
from bench.report import RESULTS, percentile, publish, save_json, tolerate_lite_keepalive
from rag.config import load_settings
from rag.embeddings import LOCAL_MODEL_NAME as MODEL
from rag.embeddings import LocalMiniLMEmbeddings
from rag.store.milvus import open_store
from rag.store.schema import chunk_metadata

DIM = 384
QUERIES = 50


async def latencies(store, vectors: np.ndarray) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for vector in vectors:
        started = time.perf_counter()
        await store.asimilarity_search_with_score_by_vector(vector.tolist(), k=4)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def measure(size: int) -> dict[str, float | str]:
    folder = Path(tempfile.mkdtemp(prefix="rag-latency-"))
    try:
        settings = load_settings(milvus_uri=str(folder / "m.db"), collection="latency")
        store = await asyncio.to_thread(
            open_store, settings, LocalMiniLMEmbeddings(), DIM, embedding_model=MODEL
        )
        rng = np.random.default_rng(size)
        meta = chunk_metadata(
            source="x", title="x", section="x", page=None, index=0, total=1, text="x",
            file_hash="x", file_size=1, ingested_at="x",
        )  # fmt: skip
        for start in range(0, size, 5000):
            vectors = rng.normal(size=(min(5000, size - start), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            rows = [{"pk": f"p{start + i}", "text": "x", "vector": v.tolist(), **meta}
                    for i, v in enumerate(vectors)]  # fmt: skip
            await store.aclient.insert("latency", rows)
        queries = rng.normal(size=(QUERIES, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        before = await latencies(store, queries)
        await asyncio.to_thread(store.client.flush, "latency")
        after = await latencies(store, queries)
        index = store.client.describe_index("latency", "vector")
        return {
            "rows": size,
            "index": f"{index.get('index_type')}/{index.get('metric_type')}",
            "before_p50": statistics.median(before),
            "before_p95": percentile(before, 0.95),
            "after_p50": statistics.median(after),
            "after_p95": percentile(after, 0.95),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def chart(results: list[dict[str, float | str]], path: Path) -> Path:
    """p50 and p95 search latency against rows, before (dashed) and after a flush (log-log)."""
    fig, (ax,) = charts.figure(1, width=7.2, height=4.6)
    rows = [float(r["rows"]) for r in results]
    series = {
        "before flush p95": [float(r["before_p95"]) for r in results],
        "before flush p50": [float(r["before_p50"]) for r in results],
        "after flush p95": [float(r["after_p95"]) for r in results],
        "after flush p50": [float(r["after_p50"]) for r in results],
    }
    styles = {"before flush p95": "--", "before flush p50": "--"}
    title = f"Milvus Lite search, k=4, {DIM}-d vectors, {QUERIES} queries per point"
    charts.lines(ax, rows, series, xlabel="rows in the collection (log)", styles=styles,
                 ylabel="search latency, ms (log)", logx=True, logy=True, title=title)  # fmt: skip
    return charts.save(fig, path)


def main() -> None:
    tolerate_lite_keepalive()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 3,000 rows")
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    sizes = [1000, 3000] if args.quick else [int(s) for s in args.sizes.split(",")]
    results = [asyncio.run(measure(size)) for size in sizes]
    rows = [[f"{r['rows']:,}", str(r["index"]),
             f"{r['before_p50']:.1f} / {r['before_p95']:.1f}",
             f"{r['after_p50']:.1f} / {r['after_p95']:.1f}",
             f"{float(r['before_p50']) / float(r['after_p50']):.1f}×"]
            for r in results]  # fmt: skip
    path = chart(results, RESULTS / "retrieval_latency.png")
    save_json("retrieval_latency", results)
    publish("retrieval_latency", "Search latency on Milvus Lite (ms, k=4)",
            ["rows", "index", "before flush p50/p95", "after flush p50/p95", "speed-up p50"],
            rows, args.quick, chart=path)  # fmt: skip


if __name__ == "__main__":
    main()
