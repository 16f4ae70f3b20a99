"""`rag feedback`: the chat's thumbs up/down, exported so bad answers become eval questions.

Reads the chat history database (RAG_DATABASE_URL) written by the chat UI; Milvus and the
models are not needed. JSONL keeps every field (sources with their passages); CSV is for a
spreadsheet (sources as labels); ``--as-eval`` writes lines in the eval dataset's format.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rag.cli.app import app, console, fail, run_async, settings_or_exit
from rag.errors import ConfigError

if TYPE_CHECKING:
    # rag.history imports chainlit (about 1.5 s): only `rag feedback` itself loads it.
    from rag.history import FeedbackRecord

CSV_COLUMNS = ["thread_id", "user", "question", "answer", "sources", "score", "comment", "time"]


class Format(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


class Score(StrEnum):
    up = "up"
    down = "down"


def render(records: list[FeedbackRecord], fmt: Format, as_eval: bool) -> str:
    """The export as text (one JSON object a line, or CSV with a header)."""
    if as_eval:
        return "".join(json.dumps(r.to_eval(), ensure_ascii=False) + "\n" for r in records)
    if fmt is Format.jsonl:
        return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(record.to_dict() | {"sources": record.source_labels()})
    return buffer.getvalue()


@app.command("feedback")
def feedback(
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="jsonl (every field) or csv.")
    ] = Format.jsonl,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")
    ] = None,
    score: Annotated[
        Score | None, typer.Option("--score", help="Only thumbs up, or only thumbs down.")
    ] = None,
    as_eval: Annotated[
        bool,
        typer.Option(
            "--as-eval",
            help='Eval dataset lines {"question", "answer", "source"}: the stand-alone '
            "question, the answer if judged good or the comment if judged bad, the first "
            "cited source.",
        ),
    ] = False,
) -> None:
    """Export the chat's stored feedback (question, answer, sources, score, comment)."""
    settings = settings_or_exit()
    if not settings.database_url:
        raise fail(ConfigError("chat history is off: set RAG_DATABASE_URL to read its feedback"))
    from rag.history import read_feedback

    url = settings.database_url
    records = run_async(lambda: read_feedback(url))
    if score is not None:
        records = [r for r in records if r.score == score.value]
    text = render(records, fmt, as_eval)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    output.write_text(text, encoding="utf-8", newline="")
    noun = "record" if len(records) == 1 else "records"
    console.print(f"{len(records)} feedback {noun} written to {output}", highlight=False)
