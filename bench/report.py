"""How every benchmark part reports: a rich table on the terminal, the same table in
Markdown under bench/results/ with the command that produced it."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Overridable so the smoke test in tests/ runs every part without touching the
# committed results.
RESULTS = Path(os.environ.get("RAG_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def publish(
    module: str, title: str, columns: list[str], rows: list[list[str]], quick: bool
) -> None:
    """Print the table and write bench/results/<module>.md."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    command = f"python -m bench.{module}" + (" --quick" if quick else "")
    lines = [f"## {title}", "", f"Command: `{command}`", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{module}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
