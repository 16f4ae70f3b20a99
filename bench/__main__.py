"""Run every benchmark part in sequence: `python -m bench [--quick]` (or `rag bench`).

Each part runs in its own process so one part's memory and threads don't colour
the next part's numbers.
"""

from __future__ import annotations

import subprocess
import sys

PARTS = ["bench.study", "bench.ingest_scale", "bench.serving", "bench.retrieval_latency"]


def main(argv: list[str]) -> int:
    quick = ["--quick"] if "--quick" in argv else []
    failed = 0
    for part in PARTS:
        print(f"\n=== {part} {' '.join(quick)}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", part, *quick]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
