"""Run every benchmark part in sequence: `python -m bench [--quick]` (or `rag bench`).

Each part runs in its own process so one part's memory and threads don't colour
the next part's numbers. At the end, the headline chart (bench/results/headline.png,
the one the README shows) is drawn from the figures each part saved as JSON.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.charts import headline
from bench.report import RESULTS, load_json

PARTS = [
    "bench.study",
    "bench.ingest_scale",
    "bench.ingest_workers",
    "bench.serving",
    "bench.retrieval_latency",
    "bench.quality",
]


def draw_headline() -> None:
    path = headline(load_json("study"), load_json("ingest_scale"), load_json("serving"),
                    RESULTS / "headline.png")  # fmt: skip
    if path is not None:
        print(f"headline chart: {path}")


def main(argv: list[str]) -> int:
    if "--headline" in argv:  # redraw from the saved figures only
        draw_headline()
        return 0
    quick = ["--quick"] if "--quick" in argv else []
    failed = 0
    took: dict[str, float] = {}
    started = time.perf_counter()
    for part in PARTS:
        print(f"\n=== {part} {' '.join(quick)}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", part, *quick]) != 0
        took[part] = time.perf_counter() - started - sum(took.values())
    draw_headline()
    print("\n" + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in took.items()))
    print(f"all parts: {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
