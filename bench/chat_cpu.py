"""CPU of this process per chat, from question to first token, and where it goes.

Why: N chats arriving together need N times this CPU from one GIL before the last of them
sees its first token (``bench.serving``), so it is the floor under time to first token at
load that no amount of async removes. This measures it alone: the fake OpenAI server with
no latency (embeddings and chat both from it, as in the serving case of an endpoint) and
Milvus, chats one after another after a warm-up, so only our own CPU shows.

Printed: CPU ms per chat before its first token, averaged over ``--chats`` chats, as the
event-loop thread used it (``time.thread_time``: our Python, langchain, openai, httpx,
pymilvus' request building) and as the whole process did (``time.process_time``: also the
gRPC threads, and Milvus Lite's engine when it runs in this process); then, with
``--profile``, cProfile's top functions of the same chats by cumulative and own time.

    python -m bench.chat_cpu [--chats 50] [--milvus lite|lite-server] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import time
from dataclasses import dataclass
from typing import Any

from bench.services import fake_openai, milvus_target
from bench.serving import QUESTIONS, ROOT, chat_settings
from ingest.pipeline import ingest_path
from rag.app import build_chain
from rag.chain import Token
from rag.services import open_services
from rag.store.lite import tolerate_lite_keepalive


@dataclass(frozen=True)
class Measured:
    thread_ms: float  # event-loop thread, per chat
    process_ms: float  # every thread of this process, per chat


async def first_token_cpu(chain: Any, chats: int, profiler: cProfile.Profile | None) -> Measured:
    """Average CPU per chat until its first token; chats one at a time, the rest of each
    answer streamed but not counted (nor profiled)."""
    thread = process = 0.0
    for i in range(chats):
        if profiler is not None:
            profiler.enable()
        started_thread, started_process = time.thread_time(), time.process_time()
        counting = True
        async for event in chain.astream(QUESTIONS[i % len(QUESTIONS)]):
            if counting and isinstance(event, Token):
                thread += time.thread_time() - started_thread
                process += time.process_time() - started_process
                counting = False
                if profiler is not None:
                    profiler.disable()
    return Measured(thread / chats * 1000, process / chats * 1000)


async def measure(target: str, chats: int, profile: bool, top: int) -> None:
    with fake_openai(0.0, 0.0) as base_url, milvus_target(target) as uri:
        assert uri is not None
        settings = chat_settings("remote", uri, base_url)
        async with open_services(settings) as services:
            await ingest_path(ROOT / "sample_docs", services.store, settings)
            chain = build_chain(services, base_url, "fake").chain
            await first_token_cpu(chain, 20, None)  # warm-up: pools, segments, caches
            gc.collect()
            gc.freeze()  # as the chat server does once started: no gen-2 walks in the figure
            measured = await first_token_cpu(chain, chats, None)
            print(
                f"CPU per chat before the first token ({chats} chats, Milvus {target}): "
                f"{measured.thread_ms:.2f} ms event-loop thread, "
                f"{measured.process_ms:.2f} ms whole process"
            )
            if not profile:
                return
            # CPU time of this thread, not wall time: on a shared machine a wall-clock
            # profile charges other processes' turns to whatever call was running.
            profiler = cProfile.Profile(time.thread_time)
            await first_token_cpu(chain, chats, profiler)
            for order in ("cumulative", "tottime"):
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.strip_dirs().sort_stats(order).print_stats(top)
                print(f"\n--- top {top} by {order} ({chats} chats) ---")
                print(out.getvalue().split("\n\n", 2)[-1].rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--milvus", default="lite", choices=("lite", "lite-server"))
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions too")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    tolerate_lite_keepalive()
    asyncio.run(measure(args.milvus, args.chats, args.profile, args.top))


if __name__ == "__main__":
    main()
