"""Part 4: many chats at once. Time to first token and answers/s for 1, 10, 50 concurrent
full chains (retrieve + streamed answer from a fake LLM at a fixed token rate).

If anything blocked the event loop (query embedding, a sync Milvus call), time to
first token would grow with the number of chats; the goal is p95 at 50 chats within
2x of a single chat.

    python -m bench.serving [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.report import percentile, publish
from bench.services import fake_openai
from ingest.pipeline import ingest_path
from rag.assistant import build_chain
from rag.chain import Answer, Token
from rag.services import open_services
from rag.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "Who needs to approve an expense claim of €1,200?",
    "What does error E-342 mean?",
    "How far can the Heron QH-640 fly with a full payload?",
    "What is our travel insurance policy number?",
    "How do I reset my VPN token?",
]


async def one_chat(chain, question: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    first = 0.0
    async for event in chain.astream(question):
        if isinstance(event, Token) and not first:
            first = time.perf_counter() - started
        elif isinstance(event, Answer):
            break
    return first, time.perf_counter() - started


async def run(
    levels: list[int], rounds: int, token_delay: float
) -> list[tuple[int, float, float, float]]:
    folder = Path(tempfile.mkdtemp(prefix="rag-serving-"))
    rows = []
    with fake_openai(0.0, 0.0, chat_token_delay=token_delay) as base_url:
        settings = load_settings(milvus_uri=str(folder / "m.db"), llm_base_url=base_url)
        services = await open_services(settings)
        await ingest_path(ROOT / "sample_docs", services.store, settings)
        chain = build_chain(services, base_url, "fake").chain
        await one_chat(chain, QUESTIONS[0])  # warm-up: connections, ONNX session
        for level in levels:
            ttfts: list[float] = []
            started = time.perf_counter()
            for _ in range(rounds):
                results = await asyncio.gather(
                    *(one_chat(chain, QUESTIONS[i % len(QUESTIONS)]) for i in range(level))
                )
                ttfts += [first for first, _ in results]
            elapsed = time.perf_counter() - started
            rows.append((level, statistics.median(ttfts), percentile(ttfts, 0.95),
                         level * rounds / elapsed))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--token-delay", type=float, default=0.02)
    args = parser.parse_args()
    measured = asyncio.run(run([1, 10, 50], 1 if args.quick else 3, args.token_delay))
    base = measured[0][2]
    rows = [[str(level), f"{p50:.3f}", f"{p95:.3f}", f"{p95 / base:.2f}×", f"{rate:.1f}"]
            for level, p50, p95, rate in measured]  # fmt: skip
    publish("serving", "Concurrent chats: time to first token (s)",
            ["chats", "TTFT p50", "TTFT p95", "p95 / single p95", "answers/s"],
            rows, args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
