"""What a run did and how it is shown: per-file outcomes, the report, progress for humans.

The pipeline tells a ``Reporter`` about each event as it happens; ``ConsoleReporter`` shows
them as a rich bar on a terminal and one plain line per event elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

Status = Literal["added", "updated", "unchanged", "removed", "skipped", "failed"]
STYLE = {
    "added": "green",
    "updated": "cyan",
    "unchanged": "dim",
    "removed": "yellow",
    "skipped": "yellow",
    "failed": "bold red",
}


@dataclass(frozen=True)
class FileOutcome:
    source: str
    status: Status
    chunks: int = 0
    reason: str = ""


@dataclass
class IngestReport:
    """What one run did; ``ok`` is False when any file failed."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    chunks_written: int = 0
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0


class Reporter(Protocol):
    """Where progress goes: a rich progress bar on a terminal, log lines elsewhere."""

    def files_found(self, total: int) -> None: ...
    def file_done(self, outcome: FileOutcome) -> None: ...
    def chunks_written(self, count: int) -> None: ...
    def note(self, source: str, message: str) -> None: ...


class SilentReporter:
    def files_found(self, total: int) -> None: ...
    def file_done(self, outcome: FileOutcome) -> None: ...
    def chunks_written(self, count: int) -> None: ...
    def note(self, source: str, message: str) -> None: ...


class ConsoleReporter:
    """Reports to a rich console; animates only when the console is a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.chunks = 0
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[chunks]} chunks · {task.fields[rate]} chunks/s"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self._task = self._progress.add_task("ingest", total=None, chunks=0, rate="0.0")

    def __enter__(self) -> ConsoleReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def files_found(self, total: int) -> None:
        self._progress.update(self._task, total=total)
        if not self.live:
            self.console.print(f"found {total} files")

    def file_done(self, outcome: FileOutcome) -> None:
        if outcome.status != "removed":
            self._progress.advance(self._task)
        # File names and reasons are data, not markup: "report[final].md" must print as is.
        source = escape(outcome.source)
        if outcome.status in ("failed", "skipped"):
            self.console.print(
                f"[{STYLE[outcome.status]}]{outcome.status}[/]: {source}: {escape(outcome.reason)}",
                highlight=False,
            )
        elif not self.live or outcome.status == "removed":
            self.console.print(
                f"{outcome.status}: {source} ({outcome.chunks} chunks)", highlight=False
            )

    def chunks_written(self, count: int) -> None:
        self.chunks += count
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{self.chunks / elapsed:.1f}" if elapsed > 0 else "0.0"
        self._progress.update(self._task, chunks=self.chunks, rate=rate)

    def note(self, source: str, message: str) -> None:
        self.console.print(f"[yellow]note[/]: {escape(source)}: {escape(message)}", highlight=False)


def summary_table(report: IngestReport) -> Table:
    """The closing summary: files by outcome, chunks written, seconds."""
    table = Table(title="Ingest summary", show_header=True, header_style="bold")
    for status in STYLE:
        table.add_column(status, justify="right", style=STYLE[status])
    table.add_column("chunks written", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row(
        *(str(report.count(s)) for s in STYLE),  # type: ignore[arg-type]
        str(report.chunks_written),
        f"{report.seconds:.1f}",
    )
    return table
