"""Part 3: ingest throughput at scale, against the slowest stage measured alone.

For a synthetic folder of N chunks it measures, in one run: embedding alone (same
batches and concurrency as the pipeline), Milvus inserts alone (precomputed
vectors), and the whole pipeline. The pipeline's goal is to run within 10% of its
slowest stage, i.e. the stages overlap instead of adding up.

    python -m bench.ingest_scale [--quick] [--sizes 1000,10000] [--modes latency,local]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import publish
from bench.services import fake_openai
from ingest.pipeline import ingest_path
from ingest.split import Splitter
from rag.services import open_services
from rag.settings import Settings, load_settings

CHUNKS_PER_FILE = 20
WORDS = [
    "drone",
    "battery",
    "flight",
    "policy",
    "approval",
    "invoice",
    "warranty",
    "pilot",
    "station",
    "charging",
    "route",
    "weather",
    "firmware",
    "sensor",
    "motor",
    "payload",
    "customer",
    "range",
    "altitude",
    "telemetry",
    "incident",
    "report",
    "travel",
    "expense",
    "manager",
    "finance",
    "security",
    "password",
    "network",
    "office",
    "parcel",
    "medical",
    "cold",
]


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


async def bounded(coroutines: list, limit: int) -> None:  # type: ignore[type-arg]
    gate = asyncio.Semaphore(limit)

    async def run(coroutine) -> None:  # type: ignore[no-untyped-def]
        async with gate:
            await coroutine

    await asyncio.gather(*(run(c) for c in coroutines))


def chunk_texts(splitter: Splitter, folder: Path) -> list[str]:
    """Blocking: the chunks the pipeline will write, to feed the stages measured alone."""
    from ingest.loaders import load

    return [c.text for p in sorted(folder.iterdir()) for c in splitter.chunks(load(p, 1 << 40))]


async def measure(settings: Settings, folder: Path) -> dict[str, float]:
    splitter = Splitter(settings.chunk_size, settings.chunk_overlap)
    texts = await asyncio.to_thread(chunk_texts, splitter, folder)
    size = settings.batch_size
    batches = [texts[i : i + size] for i in range(0, len(texts), size)]

    services = await open_services(settings)
    started = time.perf_counter()
    await bounded([services.embeddings.aembed_documents(b) for b in batches], settings.concurrency)
    embed_s = time.perf_counter() - started

    probe = await open_services(settings, collection="insert_probe", recreate=True)
    rng = np.random.default_rng(0)
    dim = len(await services.embeddings.aembed_query("probe"))
    vectors = rng.normal(size=(len(texts), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text_fields = ("source", "title", "section", "content_hash", "file_hash", "ingested_at")
    meta = dict.fromkeys(text_fields, "x") | {"page": 0, "chunk_index": 0, "chunk_count": 1}
    rows = [{"pk": f"p{i}", "text": t, "vector": vectors[i].tolist(), **meta}
            for i, t in enumerate(texts)]  # fmt: skip
    started = time.perf_counter()
    await bounded(
        [probe.store.aclient.insert("insert_probe", rows[i : i + size])
         for i in range(0, len(rows), size)],
        settings.concurrency,
    )  # fmt: skip
    insert_s = time.perf_counter() - started

    started = time.perf_counter()
    report = await ingest_path(folder, services.store, settings)
    pipeline_s = time.perf_counter() - started
    assert report.ok and report.chunks_written == len(texts), report
    return {
        "chunks": len(texts),
        "embed": len(texts) / embed_s,
        "insert": len(texts) / insert_s,
        "pipeline": len(texts) / pipeline_s,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def run(
    sizes: list[int], modes: list[str], latency: float
) -> list[tuple[str, dict[str, float]]]:
    out = []
    with fake_openai(latency, latency / 4) as base_url:
        for mode in modes:
            for size in sizes:
                work = Path(tempfile.mkdtemp(prefix="rag-scale-"))
                try:
                    corpus = work / "corpus"
                    corpus.mkdir()
                    overrides: dict[str, object] = {"milvus_uri": str(work / "m.db"),
                                                    "collection": "scale"}  # fmt: skip
                    if mode == "latency":
                        overrides |= {"embedding_provider": "openai",
                                      "embedding_base_url": base_url,
                                      "embedding_dimensions": 384, "concurrency": 8}  # fmt: skip
                    settings = load_settings(**overrides)
                    make_corpus(corpus, size, settings.chunk_size)
                    out.append((mode, await measure(settings, corpus)))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--modes", default="latency,local")
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    if args.quick:
        plan = [("latency", [1000]), ("local", [200])]
    else:
        plan = [(m, [int(s) for s in args.sizes.split(",")]) for m in args.modes.split(",")]
    results = []
    for mode, sizes in plan:
        results += asyncio.run(run(sizes, [mode], args.latency))
    rows = []
    for mode, r in results:
        ratio = r["pipeline"] / min(r["embed"], r["insert"])
        rows.append([mode, f"{r['chunks']:.0f}", f"{r['embed']:.0f}", f"{r['insert']:.0f}",
                     f"{r['pipeline']:.0f}", f"{ratio:.2f}", f"{r['rss_mb']:.0f}"])  # fmt: skip
    columns = ["embeddings", "chunks", "embed alone /s", "insert alone /s", "pipeline /s",
               "pipeline / slowest stage", "peak RSS MB"]  # fmt: skip
    publish("ingest_scale", "Ingest throughput (chunks/s): stages alone vs the pipeline",
            columns, rows, args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
