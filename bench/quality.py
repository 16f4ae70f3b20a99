"""Retrieval quality side by side on the gold set: `python -m bench.quality [--quick]`.

Why: speed work is only safe when the right passage still comes back, and the knobs that
matter (search mode, MMR, chunk size, top-k) interact, so they are compared in one run on
the same questions. The sample corpus is ingested into a temporary Milvus Lite database,
one collection per chunk size (overlap scaled to 15 % of it, the default ratio); every
search configuration then runs against every collection. Top-k needs no extra runs: every
configuration retrieves the top 10 and R@3 / R@5 / R@8 are read off the same ranking (the
greedy MMR pick order and the hybrid candidate lists do not depend on k).

Writes bench/results/quality.md and quality.json (RAG_BENCH_RESULTS overrides the folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.report import RESULTS
from ingest.pipeline import ingest_path
from rag.choices import SearchMode
from rag.eval.configs import EvalConfig
from rag.eval.dataset import Dataset, load_dataset
from rag.eval.metrics import Summary
from rag.eval.report import markdown_table
from rag.eval.run import evaluate_retrieval

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DOCS = ROOT / "sample_docs"
QUESTIONS = ROOT / "tests" / "data" / "sample_questions.jsonl"
CHUNK_SIZES = (256, 512, 800, 1024)
DEFAULT_SIZE = 800  # RAG_CHUNK_SIZE by default: what --quick measures
OVERLAP_RATIO = 0.15  # RAG_CHUNK_OVERLAP / RAG_CHUNK_SIZE by default (120 / 800)
TOP_K = (3, 5, 8)
# The search modes compared: (label, mode, ranker). The one place to add or drop a mode.
MODES: tuple[tuple[str, SearchMode, str], ...] = (
    ("dense", "dense", "rrf"),
    ("bm25", "bm25", "rrf"),
    ("hybrid-rrf", "hybrid", "rrf"),
    ("hybrid-weighted", "hybrid", "weighted"),
)
MMR = (False, True)
RELEVANCE_FLOOR = 0.3  # the default RAG_RELEVANCE_FLOOR
console = Console()


@dataclass
class Row:
    chunk_size: int
    chunks: int
    summary: Summary


def pinned_settings(uri: str, size: int) -> Any:
    """Settings for one collection: no .env, no RAG_* variable changes what is measured."""
    from rag.config import load_settings

    return load_settings(
        _env_file=None,
        milvus_uri=uri,
        milvus_token=None,
        milvus_db=None,
        collection=f"quality_{size}",
        embedding_provider="local",
        embedding_model=None,
        embedding_base_url=None,
        embedding_api_key=None,
        embedding_dimensions=None,
        chunk_size=size,
        chunk_overlap=round(size * OVERLAP_RATIO),
        relevance_floor=RELEVANCE_FLOOR,
    )


QUICK_MODES = ("dense", "hybrid-rrf")  # --quick: the baseline and the default, MMR off


def configs(quick: bool = False) -> list[EvalConfig]:
    return [
        EvalConfig(mode=mode, k=5, mmr=mmr, ranker=ranker, label=label + (" +mmr" if mmr else ""))
        for label, mode, ranker in MODES
        for mmr in MMR
        if not quick or (label in QUICK_MODES and not mmr)
    ]


async def measure(
    dataset: Dataset, sizes: Sequence[int], workdir: Path, quick: bool = False
) -> list[Row]:
    from rag.embeddings import build_embeddings
    from rag.services import resolve_dimension

    uri = str(workdir / "quality.db")
    first = pinned_settings(uri, sizes[0])
    embeddings = build_embeddings(first)
    if hasattr(embeddings, "load"):
        await asyncio.to_thread(embeddings.load)
    dimension = await resolve_dimension(first, embeddings)
    rows: list[Row] = []
    try:
        for size in sizes:
            rows += await measure_size(dataset, uri, size, embeddings, dimension, quick)
    finally:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)
    return rows


async def measure_size(
    dataset: Dataset, uri: str, size: int, embeddings: Any, dimension: int, quick: bool = False
) -> list[Row]:
    """Ingest the corpus at one chunk size, then run every search configuration on it."""
    from rag.services import open_collection

    rows: list[Row] = []
    settings = pinned_settings(uri, size)
    store = await open_collection(settings, embeddings, dimension, recreate=True)
    started = time.perf_counter()
    report = await ingest_path(SAMPLE_DOCS, store, settings)
    if not report.ok:
        raise SystemExit(f"ingest failed at chunk size {size}: {report.outcomes}")
    console.print(
        f"chunk size {size}: {report.chunks_written} chunks in "
        f"{time.perf_counter() - started:.0f} s",
        highlight=False,
    )
    if getattr(store, "bm25_unavailable", None):
        console.print(f"[yellow]note[/]: {store.bm25_unavailable}; bm25/hybrid run dense")
    for config in configs(quick):
        summary = await evaluate_retrieval(store, dataset, config, RELEVANCE_FLOOR)
        rows.append(Row(size, report.chunks_written, summary))
    return rows


def best_floor(summary: Summary) -> tuple[float, float]:
    """The relevance floor that best separates answerable from unanswerable questions.

    Balanced accuracy: the mean of "unanswerable refused" and "answerable kept".
    """
    scored = [(r.best_score or 0.0, r.unanswerable) for r in summary.results]
    best = (RELEVANCE_FLOOR, 0.0)
    for floor in sorted({round(s, 3) for s, _ in scored}):
        refused = [s < floor for s, unanswerable in scored if unanswerable]
        kept = [s >= floor for s, unanswerable in scored if not unanswerable]
        accuracy = (sum(refused) / max(len(refused), 1) + sum(kept) / max(len(kept), 1)) / 2
        if accuracy > best[1]:
            best = (floor, accuracy)
    return best


def cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def label(summary: Summary) -> str:
    """The configuration, and what actually ran when BM25 was unavailable."""
    if summary.effective_mode == summary.mode:
        return summary.config
    return f"{summary.config} (ran {summary.effective_mode})"


def table_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    columns = ["chunk", "config", "R@1", "R@3", "R@5", "R@8", "R@10", "MRR@10", "nDCG@10"]
    columns += ["no-answer", "ms/q"]
    body = [
        [
            str(row.chunk_size),
            label(row.summary),
            *(cell(row.summary.recall[k]) for k in (1, *TOP_K, 10)),
            cell(row.summary.mrr),
            cell(row.summary.ndcg),
            cell(row.summary.no_answer_accuracy),
            f"{row.summary.mean_seconds * 1000:.0f}",
        ]
        for row in rows
    ]
    return columns, body


def tag_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    tags = sorted({t for row in rows for t in row.summary.tag_recall5})
    counts = {t: max(row.summary.tag_recall5.get(t, (0, 0))[1] for row in rows) for t in tags}
    columns = ["chunk", "config", *(f"{t} (n={counts[t]})" for t in tags)]
    body = [
        [
            str(row.chunk_size),
            row.summary.config,
            *(cell(row.summary.tag_recall5.get(t, (None, 0))[0]) for t in tags),
        ]
        for row in rows
    ]
    return columns, body


def show(title: str, columns: list[str], body: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("config", "chunk") else "right")
    for values in body:
        table.add_row(*values)
    console.print(table)


def write(dataset: Dataset, rows: list[Row], command: str, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    first = rows[0].summary
    dense_row = [r for r in rows if r.summary.config == "dense"][-1]
    dense = dense_row.summary
    floor, balanced = best_floor(dense)
    chunks = ", ".join(sorted({f"{r.chunk_size}: {r.chunks}" for r in rows}))
    markdown = [
        "# Retrieval quality on the gold set",
        "",
        f"`{command}` — dataset `{dataset.name}`: {first.questions} questions "
        f"({first.answerable} answerable, {first.unanswerable} unanswerable); "
        f"all-MiniLM-L6-v2 (local), Milvus Lite; chunks per size: {chunks}.",
        "",
        "A hit is a retrieved chunk from the gold source (and page / quote when the question "
        "gives them). R@k = share of answerable questions with a hit in the top k; top-k "
        "3/5/8 are the R@3/R@5/R@8 columns. no-answer = unanswerable questions whose best "
        f"score is below the relevance floor {RELEVANCE_FLOOR} (the model would not be asked).",
        "",
        *markdown_table(*table_rows(rows), left=2).splitlines(),
        "",
        "## Recall@5 by tag",
        "",
        *markdown_table(*tag_rows(rows), left=2).splitlines(),
        "",
        "## Relevance floor",
        "",
        f"For dense search at chunk size {dense_row.chunk_size}, the floor that best separates "
        f"answerable from unanswerable questions by the best score is {floor:.3f} "
        f"(balanced accuracy {balanced:.3f}; at {RELEVANCE_FLOOR}: "
        f"{cell(dense.no_answer_accuracy)} of unanswerable refused, "
        f"{dense.false_refusals} answerable refused).",
        "",
    ]
    md_path, json_path = out / "quality.md", out / "quality.json"
    md_path.write_text("\n".join(markdown), encoding="utf-8")
    data = {
        "command": command,
        "dataset": dataset.name,
        "relevance_floor": RELEVANCE_FLOOR,
        "best_floor_dense": {"floor": floor, "balanced_accuracy": balanced},
        # Per question only the rank of the first hit and the best score, by dataset line:
        # the full results of 24 configurations would be megabytes in the repository.
        "rows": [
            {"chunk_size": r.chunk_size, "chunks": r.chunks}
            | {k: v for k, v in r.summary.to_dict().items() if k != "results"}
            | {
                "rank_by_line": {str(q.line): q.rank for q in r.summary.results},
                "best_score_by_line": {str(q.line): q.best_score for q in r.summary.results},
            }
            for r in rows
        ],
    }
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return md_path, json_path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    quick_help = f"chunk size {DEFAULT_SIZE}, {' and '.join(QUICK_MODES)} only"
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--questions", type=Path, default=QUESTIONS, help="JSONL gold set")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.questions)
    sizes = (DEFAULT_SIZE,) if args.quick else CHUNK_SIZES
    with tempfile.TemporaryDirectory(prefix="rag-quality-") as workdir:
        rows = asyncio.run(measure(dataset, sizes, Path(workdir), args.quick))
    show("Retrieval quality", *table_rows(rows))
    show("Recall@5 by tag", *tag_rows(rows))
    command = "python -m bench.quality" + (" --quick" if args.quick else "")
    paths = write(dataset, rows, command, args.out)
    console.print(f"written: {paths[0]}, {paths[1]}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
