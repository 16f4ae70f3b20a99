"""Part 1 and 2: the Milvus async tutorial's workload, sync vs naive async vs this project's way.

The reference study (Milvus' LangChain async tutorial) published, on a Milvus server
with OpenAI embeddings, sync / async seconds for add, search and delete. Its gaps come
from the remote embedding API's latency, which async overlaps; so this runs against
a loopback OpenAI-compatible server that adds realistic latency per request, and
prints every variant side by side from one run. Compare ratios, not seconds.

A second table scales the add up to an ingest (``--ingest-sizes``, 1,000 documents by
default): naive gather against the project's way only, since the sync loop would take
N x the latency (200 s for 1,000 at 0.2 s) and adds nothing the add rows don't show.

    python bench/study.py [--quick] [--targets lite,lite-server] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
from langchain_core.documents import Document
from langchain_milvus import Milvus
from langchain_openai import OpenAIEmbeddings
from rich.console import Console
from rich.table import Table

from bench import charts
from bench.report import RESULTS, save_json, tolerate_lite_keepalive
from bench.services import fake_openai, milvus_target
from rag.store.milvus import SERVER_GRPC_OPTIONS

PUBLISHED = {  # seconds: (sync, async)
    ("add", 10): (5.36, 1.74),
    ("add", 100): (65.60, 2.77),
    ("search", 10): (6.07, 2.31),
    ("search", 100): (54.22, 3.72),
    ("delete", 10): (2.82, 0.58),
    ("delete", 100): (29.21, 0.61),
}
SEARCH_ROWS = 1000
# The pipeline's batch size and two writers; the embedding concurrency that
# bench.ingest_scale uses for remote endpoints (RAG_CONCURRENCY, 4 by default).
PIPELINE_BATCH = 64
PIPELINE_CONCURRENCY = 8
PIPELINE_WRITERS = 2
KEEPALIVE = 2.0  # seconds a pooled connection may idle (see open_store)
REQUEST_TIMEOUT = 30.0


def documents(n: int, start: int = 0) -> list[Document]:
    rng = random.Random(start)
    return [
        Document(
            page_content=f"This is test document {i} with some random content: {rng.random()}",
            metadata={"id": f"doc_{i}", "score": rng.random(), "category": f"cat_{i % 5}"},
        )
        for i in range(start, start + n)
    ]


def study_connection(uri: str) -> dict[str, object]:
    """The tutorial's connection, with the app's ping interval on a server (rag/store/milvus.py)."""
    if uri.endswith(".db"):
        return {"uri": uri}
    return {"uri": uri, "grpc_options": SERVER_GRPC_OPTIONS}


def open_store(uri: str, base_url: str) -> Milvus:
    """The study's store: auto_id, drop_old; created up front so concurrent inserts don't race.

    Pooled connections expire after 2 s idle, before the fake server (uvicorn: 5 s)
    closes them: the sync variants block the loop for seconds, and requests sent on
    connections the server had closed meanwhile were seen to wait for headers forever
    (in 3 of 6 runs, the naive search after the sync loop). The timeout is a backstop.
    """
    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100,
                           keepalive_expiry=KEEPALIVE)  # fmt: skip
    embeddings = OpenAIEmbeddings(
        model="text-embedding-3-small", base_url=base_url, api_key="bench",  # type: ignore[arg-type]
        check_embedding_ctx_length=False, max_retries=6, request_timeout=REQUEST_TIMEOUT,
        http_async_client=httpx2.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT),
        http_client=httpx2.Client(limits=limits, timeout=REQUEST_TIMEOUT),
    )  # fmt: skip
    store = Milvus(
        embeddings, collection_name="bench", connection_args=study_connection(uri),
        auto_id=True, drop_old=True, consistency_level="Strong",
    )  # fmt: skip
    store.add_documents(documents(1, start=10**6))
    store.delete(expr="id == 'doc_1000000'")
    return store


async def timed(func: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await func()
    return time.perf_counter() - started


async def bounded(tasks: list[Callable[[], Awaitable[object]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def run(task: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await task()

    await asyncio.gather(*(run(t) for t in tasks))


async def staged_add(store: Milvus, docs: list[Document]) -> None:
    """ingest/pipeline.py's shape on the study's documents: batches embedded by
    PIPELINE_CONCURRENCY tasks (``aembed_documents``), written by PIPELINE_WRITERS others
    (``aadd_embeddings``) through a bounded queue, so no write holds an embedding slot."""
    assert store.embeddings is not None and not isinstance(store.embeddings, list)
    embeddings = store.embeddings
    batches = [docs[i : i + PIPELINE_BATCH] for i in range(0, len(docs), PIPELINE_BATCH)]
    embedded: asyncio.Queue[tuple[list[Document], list[list[float]]] | None] = asyncio.Queue(
        maxsize=2 * PIPELINE_WRITERS
    )

    async def embed(batch: list[Document]) -> None:
        vectors = await embeddings.aembed_documents([d.page_content for d in batch])
        await embedded.put((batch, vectors))

    async def write() -> None:
        while (item := await embedded.get()) is not None:
            batch, vectors = item
            await store.aadd_embeddings([d.page_content for d in batch], vectors,
                                        [d.metadata for d in batch])  # fmt: skip

    writers = [asyncio.create_task(write()) for _ in range(PIPELINE_WRITERS)]
    try:
        await bounded([lambda b=b: embed(b) for b in batches], PIPELINE_CONCURRENCY)
        for _ in writers:
            await embedded.put(None)
        await asyncio.gather(*writers)
    finally:
        for task in writers:
            task.cancel()


async def bench_add(
    uri: str, base_url: str, n: int, with_sync: bool = True
) -> tuple[float, float, float]:
    """Seconds for sync loop (NaN when skipped), naive gather and the project's way."""
    docs = documents(n)

    async def sync_loop() -> None:
        for doc in docs:
            store.add_documents([doc])

    async def naive() -> None:
        await asyncio.gather(*(store.aadd_documents([doc]) for doc in docs))

    async def pipeline() -> None:
        await staged_add(store, docs)

    results = [] if with_sync else [math.nan]
    for variant in (sync_loop, naive, pipeline)[0 if with_sync else 1 :]:
        store = await asyncio.to_thread(open_store, uri, base_url)
        results.append(await timed(variant))
        rows = store.client.query("bench", filter="", output_fields=["count(*)"])[0]["count(*)"]
        assert rows == n, f"{variant.__name__} stored {rows} rows, expected {n}"
    return results[0], results[1], results[2]


async def bench_search_delete(
    uri: str, base_url: str, sizes: list[int]
) -> dict[tuple[str, int], tuple[float, float, float]]:
    store = await asyncio.to_thread(open_store, uri, base_url)
    corpus = documents(SEARCH_ROWS)
    for i in range(0, SEARCH_ROWS, 200):
        await store.aadd_documents(corpus[i : i + 200])
    # As the ingest pipeline does: unflushed rows are brute-forced by Milvus Lite.
    await asyncio.to_thread(store.client.flush, "bench")
    out: dict[tuple[str, int], tuple[float, float, float]] = {}
    for n in sizes:
        queries = [f"test document {i % 50}" for i in range(n)]

        async def sync_loop(queries: list[str] = queries) -> None:
            for q in queries:
                store.similarity_search(q, k=3)

        async def naive(queries: list[str] = queries) -> None:
            await asyncio.gather(*(store.asimilarity_search(q, k=3) for q in queries))

        async def batched(queries: list[str] = queries) -> None:
            # One embedding request for all queries, then concurrent vector searches.
            vectors = await store.embeddings.aembed_documents(queries)  # type: ignore[union-attr]
            await asyncio.gather(*(store.asimilarity_search_by_vector(v, k=3) for v in vectors))

        out[("search", n)] = (await timed(sync_loop), await timed(naive), await timed(batched))
    offset = 0
    for n in sizes:
        ids = [[f"doc_{offset + j * n + i}" for i in range(n)] for j in range(3)]
        offset += 3 * n

        async def sync_delete(ids: list[list[str]] = ids) -> None:
            for doc_id in ids[0]:
                store.delete(expr=f"id == '{doc_id}'")

        async def naive_delete(ids: list[list[str]] = ids) -> None:
            await asyncio.gather(*(store.adelete(expr=f"id == '{d}'") for d in ids[1]))

        async def one_delete(ids: list[list[str]] = ids) -> None:
            await store.adelete(expr=f"id in {ids[2]!r}")

        out[("delete", n)] = (
            await timed(sync_delete), await timed(naive_delete), await timed(one_delete),
        )  # fmt: skip
    return out


def seconds(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def ratio(a: float, b: float) -> str:
    return "—" if math.isnan(a) or math.isnan(b) else f"{a / b:.1f}×"


def render(target: str, results: dict[tuple[str, int], tuple[float, float, float]]) -> Table:
    table = Table(title=f"Study workload on {target} (seconds; ratios = speed-up)")
    for column in ("op", "N", "sync", "naive async", "project way", "sync/async",
                   "sync/project", "async/project", "published sync/async"):  # fmt: skip
        table.add_column(column, justify="right")
    for (op, n), (sync, naive, ours) in sorted(results.items()):
        pub = PUBLISHED.get((op, n))
        published = f"{pub[0]:.2f}/{pub[1]:.2f} = {pub[0] / pub[1]:.1f}×" if pub else ""
        table.add_row(op, str(n), seconds(sync), seconds(naive), seconds(ours, 3),
                      ratio(sync, naive), ratio(sync, ours), ratio(naive, ours),
                      published)  # fmt: skip
    return table


def markdown(target: str, results: dict[tuple[str, int], tuple[float, float, float]]) -> str:
    lines = [
        f"### {target}",
        "",
        "| op | N | sync s | naive async s | project way s | sync/async | async/project "
        "| published sync/async |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (op, n), (sync, naive, ours) in sorted(results.items()):
        pub = PUBLISHED.get((op, n))
        published = f"{pub[0]}/{pub[1]} = {pub[0] / pub[1]:.1f}×" if pub else ""
        lines.append(f"| {op} | {n} | {seconds(sync)} | {seconds(naive)} | {seconds(ours, 3)} | "
                     f"{ratio(sync, naive)} | {ratio(naive, ours)} | {published} |")  # fmt: skip
    return "\n".join(lines) + "\n"


Results = dict[tuple[str, int], tuple[float, float, float]]


def chart(by_target: dict[str, Results], path: Path, latency: float) -> Path:
    """Seconds per operation and N, sync vs naive gather vs this project (log scale)."""
    fig, axes = charts.figure(len(by_target), width=7.8, height=4.6)
    for ax, (target, results) in zip(axes, by_target.items(), strict=True):
        keys = [k for k in sorted(results) if not math.isnan(results[k][0])]
        groups = [f"{op} ×{n}" for op, n in keys]
        series = {
            "sync loop": [results[k][0] for k in keys],
            "naive asyncio.gather": [results[k][1] for k in keys],
            "this project": [results[k][2] for k in keys],
        }
        title = f"Milvus {target}, embedding latency {latency * 1000:.0f} ms/request"
        charts.bars(ax, groups, series, ylabel="seconds (log)", log=True, title=title)
    return charts.save(fig, path, "Milvus async tutorial workload: lower is better")


async def run(
    targets: list[str], sizes: list[int], ingest_sizes: list[int], latency: float, jitter: float
) -> tuple[str, dict[str, Results]]:
    console = Console()
    report = []
    by_target: dict[str, Results] = {}
    with fake_openai(latency, jitter) as base_url:
        for target in targets:
            with milvus_target(target) as uri:
                if uri is None:
                    console.print(f"[yellow]skipped {target}: milvus-server is not installed[/]")
                    continue
                results = {("add", n): await bench_add(uri, base_url, n) for n in sizes}
                results |= {("ingest", n): await bench_add(uri, base_url, n, with_sync=False)
                            for n in ingest_sizes}  # fmt: skip
                results |= await bench_search_delete(uri, base_url, sizes)
                console.print(render(target, results))
                report.append(markdown(target, results))
                by_target[target] = results
    return "\n".join(report), by_target


QUICK_SIZES, QUICK_INGEST = "10,30", "500"
GOAL = 10.0  # the project's way over the naive gather, on add x100 and ingest x1,000


def goal_note(by_target: dict[str, Results]) -> str:
    """The issue's goal, met or not, for the largest add and ingest of each target."""
    lines = [f"\nGoal: the project's way at least {GOAL:.0f}× faster than the naive "
             "per-document gather on the largest add and ingest.\n"]  # fmt: skip
    for target, results in by_target.items():
        for op in ("add", "ingest"):
            sizes = [n for o, n in results if o == op]
            if sizes:
                _, naive, ours = results[(op, max(sizes))]
                verdict = "met" if naive / ours >= GOAL else "NOT met"
                lines.append(f"- {target}, {op} ×{max(sizes)}: {naive / ours:.1f}× ({verdict})")
    return "\n".join(lines) + "\n"


def main() -> None:
    tolerate_lite_keepalive()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=10, 30, ingest 500, Lite only")
    parser.add_argument("--targets", default="lite,lite-server,standalone")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per embedding call")
    parser.add_argument("--jitter", type=float, default=0.05)
    parser.add_argument("--sizes", default="10,100", help="N per operation, comma-separated")
    parser.add_argument(
        "--ingest-sizes", default="1000", help="N for naive gather vs the project only ('' none)"
    )
    args = parser.parse_args()
    targets = ["lite"] if args.quick else args.targets.split(",")
    # --quick keeps to minutes: the sync loops alone cost N x the latency per operation.
    sizes = [int(n) for n in (QUICK_SIZES if args.quick else args.sizes).split(",")]
    ingest = QUICK_INGEST if args.quick else args.ingest_sizes
    ingest_sizes = [int(n) for n in ingest.split(",") if n]
    text, by_target = asyncio.run(run(targets, sizes, ingest_sizes, args.latency, args.jitter))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = chart(by_target, RESULTS / "study.png", args.latency)
    save_json("study", {
        target: [{"op": op, "n": n, "sync": None if math.isnan(a) else a, "naive": b, "project": c}
                 for (op, n), (a, b, c) in sorted(results.items())]
        for target, results in by_target.items()
    })  # fmt: skip
    command = "python -m bench.study" + (" --quick" if args.quick else "")
    header = (
        f"## Study workload (latency {args.latency}s ± {args.jitter}s per embedding call)\n\n"
        f"Command: `{command}`\n\n"
    )
    chart_link = f"\n![study workload: sync vs naive async vs this project]({path.name})\n"
    footer = goal_note(by_target) + chart_link
    (RESULTS / "study.md").write_text(header + text + footer, encoding="utf-8")


if __name__ == "__main__":
    main()
