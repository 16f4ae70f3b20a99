"""Charts for the benchmark results: one PNG beside each Markdown table in bench/results/.

Tables give exact figures; a chart shows at a glance which variant wins and by how
much (the study's gaps span three orders of magnitude, hence log scales). Agg is
forced so the benchmarks run headless, on CI and over SSH alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from matplotlib.axes import Axes

# Colour-blind-safe (Okabe-Ito), the same variant always the same colour.
PALETTE = ["#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
DPI = 110


def bars(
    ax: Axes,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
    log: bool = False,
    fmt: str = "{:.2g}",
) -> None:
    """Grouped bars: one group per x label, one bar per series, each bar labelled."""
    width = 0.8 / max(1, len(series))
    for s, (name, values) in enumerate(series.items()):
        xs = [g + (s - (len(series) - 1) / 2) * width for g in range(len(groups))]
        drawn = ax.bar(xs, values, width, label=name, color=PALETTE[s % len(PALETTE)])
        ax.bar_label(drawn, labels=[fmt.format(v) for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), list(groups))
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.margins(y=0.25)
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(series), 3), framealpha=0.9)


def lines(
    ax: Axes,
    xs: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
    styles: dict[str, str] | None = None,
) -> None:
    """One line with markers per series over shared x values."""
    for s, (name, values) in enumerate(series.items()):
        style = (styles or {}).get(name, "-")
        ax.plot(xs, values, style, marker="o", label=name, color=PALETTE[s % len(PALETTE)])
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(list(xs), [f"{x:,g}" for x in xs])
    ax.minorticks_off() if logx else None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def figure(
    panels: int, *, width: float = 7.5, height: float = 4.2
) -> tuple[plt.Figure, list[Axes]]:
    """A figure of ``panels`` side-by-side axes (always a list, even for one)."""
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    return fig, list(axes[0])


def save(fig: plt.Figure, path: Path, suptitle: str | None = None) -> Path:
    """Write the PNG and free the figure (benchmarks draw several in one process)."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def headline(study: Any, ingest: Any, serving: Any, path: Path) -> Path | None:
    """The README's one chart: each goal of the benchmarks and where this run stands.

    Left, what async buys in the tutorial's workload (speed-up over the sync loop);
    middle, ingest pipeline against its slowest stage (goal 0.9); right, p95 time to
    first token against one chat (goal at most 2x). Parts not run are left out.
    """
    panels = [p for p in (study, ingest, serving) if p]
    if not panels:
        return None
    fig, axes = figure(len(panels), width=5.2, height=4.4)
    ax_iter = iter(axes)
    if study:
        ax = next(ax_iter)
        target, rows = next(iter(study.items()))
        rows = [r for r in rows if r["sync"] is not None]  # the ingest rows have no sync loop
        rows = [r for r in rows if r["n"] == max(x["n"] for x in rows)]
        bars(ax, [f"{r['op']} ×{r['n']}" for r in rows],
             {"naive gather": [r["sync"] / r["naive"] for r in rows],
              "this project": [r["sync"] / r["project"] for r in rows]},
             ylabel="speed-up over the sync loop (log)", log=True, fmt="{:.0f}×",
             title=f"Async tutorial workload (Milvus {target})")  # fmt: skip
    if ingest:
        ax = next(ax_iter)
        labels = [f"{r['mode']}\n@{r['target']}\n{r['chunks']:,}" for r in ingest]
        bars(ax, labels,
             {"vs slowest stage": [r["vs_slowest"] for r in ingest],
              "vs max(slowest stage, client CPU)": [r["vs_bound"] for r in ingest]},
             ylabel="pipeline rate / slowest stage alone", fmt="{:.2f}",
             title="Ingest overlap (goal ≥ 0.9)")  # fmt: skip
        ax.axhline(0.9, color="black", linestyle=":", linewidth=1)
        ax.tick_params(axis="x", labelsize=7)
    if serving:
        ax = next(ax_iter)
        modes = list(dict.fromkeys(r["mode"] for r in serving))
        chats = sorted({r["chats"] for r in serving})
        by = {(r["mode"], r["chats"]): r["vs_single"] for r in serving}
        lines(ax, chats, {m: [by[m, c] for c in chats] for m in modes}, logx=True,
              xlabel="concurrent chats", ylabel="p95 TTFT / single-chat p95",
              title="Serving (goal ≤ 2× at 50 chats)")  # fmt: skip
        ax.axhline(serving[0].get("goal", 2.0), color="black", linestyle=":", linewidth=1)
    return save(fig, path, "RAG benchmarks at a glance (bench/results/*.md for the tables)")
