"""Part 1 and 2: the Milvus async tutorial's workload, sync vs naive async vs this project's way.

The reference study (Milvus' LangChain async tutorial) published, on a Milvus server
with OpenAI embeddings, sync / async seconds for add, search and delete. Its gaps come
from the remote embedding API's latency, which async overlaps; so this runs against
a loopback OpenAI-compatible server that adds realistic latency per request, and
prints every variant side by side from one run. Compare ratios, not seconds.

    python bench/study.py [--quick] [--targets lite,lite-server] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
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

PUBLISHED = {  # seconds: (sync, async)
    ("add", 10): (5.36, 1.74),
    ("add", 100): (65.60, 2.77),
    ("search", 10): (6.07, 2.31),
    ("search", 100): (54.22, 3.72),
    ("delete", 10): (2.82, 0.58),
    ("delete", 100): (29.21, 0.61),
}
SEARCH_ROWS = 1000
PIPELINE_BATCH = 64
PIPELINE_CONCURRENCY = 4
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
        embeddings, collection_name="bench", connection_args={"uri": uri},
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


async def bench_add(uri: str, base_url: str, n: int) -> tuple[float, float, float]:
    docs = documents(n)

    async def sync_loop() -> None:
        for doc in docs:
            store.add_documents([doc])

    async def naive() -> None:
        await asyncio.gather(*(store.aadd_documents([doc]) for doc in docs))

    async def pipeline() -> None:
        batches = [docs[i : i + PIPELINE_BATCH] for i in range(0, n, PIPELINE_BATCH)]
        await bounded([lambda b=b: store.aadd_documents(b) for b in batches], PIPELINE_CONCURRENCY)

    results = []
    for variant in (sync_loop, naive, pipeline):
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


def render(target: str, results: dict[tuple[str, int], tuple[float, float, float]]) -> Table:
    table = Table(title=f"Study workload on {target} (seconds; ratios = speed-up)")
    for column in ("op", "N", "sync", "naive async", "project way", "sync/async",
                   "sync/project", "async/project", "published sync/async"):  # fmt: skip
        table.add_column(column, justify="right")
    for (op, n), (sync, naive, ours) in sorted(results.items()):
        pub = PUBLISHED.get((op, n))
        published = f"{pub[0]:.2f}/{pub[1]:.2f} = {pub[0] / pub[1]:.1f}×" if pub else ""
        table.add_row(op, str(n), f"{sync:.2f}", f"{naive:.2f}", f"{ours:.3f}",
                      f"{sync / naive:.1f}×", f"{sync / ours:.1f}×", f"{naive / ours:.1f}×",
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
        lines.append(f"| {op} | {n} | {sync:.2f} | {naive:.2f} | {ours:.3f} | "
                     f"{sync / naive:.1f}× | {naive / ours:.1f}× | {published} |")  # fmt: skip
    return "\n".join(lines) + "\n"


Results = dict[tuple[str, int], tuple[float, float, float]]


def chart(by_target: dict[str, Results], path: Path, latency: float) -> Path:
    """Seconds per operation and N, sync vs naive gather vs this project (log scale)."""
    fig, axes = charts.figure(len(by_target), width=7.8, height=4.6)
    for ax, (target, results) in zip(axes, by_target.items(), strict=True):
        keys = sorted(results)
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
    targets: list[str], sizes: list[int], latency: float, jitter: float
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
                results |= await bench_search_delete(uri, base_url, sizes)
                console.print(render(target, results))
                report.append(markdown(target, results))
                by_target[target] = results
    return "\n".join(report), by_target


def main() -> None:
    tolerate_lite_keepalive()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=10 and 100 on Milvus Lite only")
    parser.add_argument("--targets", default="lite,lite-server,standalone")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per embedding call")
    parser.add_argument("--jitter", type=float, default=0.05)
    parser.add_argument("--sizes", default="10,100", help="N per operation, comma-separated")
    args = parser.parse_args()
    targets = ["lite"] if args.quick else args.targets.split(",")
    text, by_target = asyncio.run(
        run(targets, [int(n) for n in args.sizes.split(",")], args.latency, args.jitter)
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = chart(by_target, RESULTS / "study.png", args.latency)
    save_json("study", {
        target: [{"op": op, "n": n, "sync": a, "naive": b, "project": c}
                 for (op, n), (a, b, c) in sorted(results.items())]
        for target, results in by_target.items()
    })  # fmt: skip
    command = "python -m bench.study" + (" --quick" if args.quick else "")
    header = (
        f"## Study workload (latency {args.latency}s ± {args.jitter}s per embedding call)\n\n"
        f"Command: `{command}`\n\n"
    )
    footer = f"\n![study workload: sync vs naive async vs this project]({path.name})\n"
    (RESULTS / "study.md").write_text(header + text + footer, encoding="utf-8")


if __name__ == "__main__":
    main()
