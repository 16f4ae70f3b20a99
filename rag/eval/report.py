"""An evaluation as tables and files: the headline table, recall by tag, JSON and Markdown.

Why apart from the runs: the CLI prints the same tables it writes, and ``bench/quality.py``
writes its own reports with the same Markdown table; none of them needs a store or a model.
The files are compared across commits (``bench/results``), so their format is fixed here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from rag.eval.dataset import Dataset
    from rag.eval.metrics import Summary

ANSWER_KEYS = [
    "correct", "refused-ok", "false-refusal", "citations-valid", "cites-gold",
    "ttft-p50", "ttft-p95", "tokens/s",
]  # fmt: skip


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def headline(summaries: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the main table (one row per configuration)."""
    columns = ["config", "R@1", "R@5", "R@10", "R@k", "MRR@10", "nDCG@10", "no-answer"]
    with_answers = any(s.answers for s in summaries)
    if with_answers:
        columns += [f"ans {k}" for k in ANSWER_KEYS]
    rows = []
    for s in summaries:
        name = s.config + (f" (ran {s.effective_mode})" if s.effective_mode != s.mode else "")
        ranked = [*(s.recall[k] for k in (1, 5, 10)), s.recall_at_k, s.mrr, s.ndcg]
        # Without answerable questions there is nothing to rank: "–", not a misleading 0.
        row = [name, *(_cell(v if s.answerable else None) for v in ranked)]
        row.append(_cell(s.no_answer_accuracy))
        if with_answers:
            row += [_cell((s.answers or {}).get(k)) for k in ANSWER_KEYS]
        rows.append(row)
    return columns, rows


def tag_table(summaries: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    """Recall@5 per tag, one row per configuration; n is the tag's answerable questions."""
    tags = sorted({t for s in summaries for t in s.tag_recall5})
    columns = ["config", *(f"{t} (n={_tag_n(summaries, t)})" for t in tags)]
    rows = [
        [s.config, *(_cell(s.tag_recall5[t][0]) if t in s.tag_recall5 else "–" for t in tags)]
        for s in summaries
    ]
    return columns, rows


def _tag_n(summaries: Sequence[Summary], tag: str) -> int:
    return max(s.tag_recall5.get(tag, (0.0, 0))[1] for s in summaries)


def markdown_table(columns: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table: the first ``left`` columns are labels, the others right-aligned."""
    escape = str.maketrans({"|": "\\|"})
    lines = ["| " + " | ".join(c.translate(escape) for c in columns) + " |"]
    lines.append("|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|")
    lines += ["| " + " | ".join(c.translate(escape) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(
    dataset: Dataset, summaries: Sequence[Summary], context: dict[str, Any], title: str = ""
) -> str:
    """A report to commit or paste into a pull request."""
    first = summaries[0]
    parts = [
        f"# {title or f'Answer quality: {dataset.name}'}",
        "",
        f"Dataset `{dataset.name}`: {first.questions} questions "
        f"({first.answerable} answerable, {first.unanswerable} unanswerable). "
        + ", ".join(f"{k}: `{v}`" for k, v in context.items()),
        "",
        "R@k = recall at each configuration's own k (the passages the model is given); "
        "no-answer = unanswerable questions refused "
        "(best score below the relevance floor, or with answers: the model declined).",
        "",
        markdown_table(*headline(summaries)),
        "",
        *(
            ["## Recall@5 by tag", "", markdown_table(*tag_table(summaries)), ""]
            if any(s.tag_recall5 for s in summaries)
            else []
        ),
        "## Misses (answerable questions with no hit in the top 10)",
        "",
    ]
    for s in summaries:
        missed = [r for r in s.results if not r.unanswerable and r.rank is None]
        wrongly = [r for r in s.results if r.unanswerable and not r.refused_retrieval]
        parts.append(
            f"- **{s.config}**: {len(missed)} missed"
            + (f" (lines {', '.join(str(r.line) for r in missed)})" if missed else "")
            + f"; {len(wrongly)} unanswerable above the floor"
            + (f" (lines {', '.join(str(r.line) for r in wrongly)})" if wrongly else "")
        )
    return "\n".join(parts) + "\n"


def json_report(
    dataset: Dataset, summaries: Sequence[Summary], context: dict[str, Any]
) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "path": dataset.path,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "context": context,
        "summaries": [s.to_dict() for s in summaries],
    }


def write_reports(
    out_dir: Path,
    stem: str,
    dataset: Dataset,
    summaries: Sequence[Summary],
    context: dict[str, Any],
    title: str = "",
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    report = json_report(dataset, summaries, context)
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    md_path.write_text(markdown_report(dataset, summaries, context, title), "utf-8")
    return json_path, md_path
