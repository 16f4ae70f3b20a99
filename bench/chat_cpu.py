"""CPU of this process per chat, from question to first token, and where it goes.

Why: N chats arriving together need N times this CPU from one GIL before the last of them
sees its first token (``bench.serving``), so it is the floor under time to first token at
load that no amount of async removes. This measures it alone: the fake OpenAI server with
no latency (embeddings and chat both from it, as in the serving case of an endpoint) and
Milvus, chats one after another after a warm-up, so only our own CPU shows.

Two client setups side by side, in turns within one run (the machine is shared, so each
turn of one is next to a turn of the other):
- ``sdk+httpx``: the openai SDK's typed chat client over httpx, for chat and embeddings
  (what langchain-openai builds by default; this app before ``rag.llm.StreamedChatDicts``);
- ``dicts+aiohttp``: what the app uses (``rag.llm`` says why).

Printed for each: CPU ms per chat before its first token as the event-loop thread used it
(``time.thread_time``: our Python, langchain, openai, the HTTP client, pymilvus' request
building) and as the whole process did (``time.process_time``: also gRPC's threads, and
Milvus Lite's engine when it runs in this process), the CPU of a whole streamed answer, and
the ratios; then, with ``--profile``, cProfile's top functions (thread CPU time) of the
app's setup by cumulative and own time.

    python -m bench.chat_cpu [--chats 50] [--milvus lite|lite-server] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import gc
import io
import pstats
import time
from typing import Any

import openai
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from bench.report import Measured, first_token_cpu
from bench.services import fake_openai, milvus_target
from bench.serving import QUESTIONS, ROOT, chat_settings
from ingest.pipeline import ingest_path
from rag.app import build_chain
from rag.config import Settings
from rag.embeddings import build_embeddings, close_embeddings
from rag.llm import close_chat_model
from rag.services import open_services
from rag.store.lite import tolerate_lite_keepalive


def sdk_httpx_chain(chain: Any, settings: Settings, base_url: str) -> Any:
    """The same chain on langchain-openai's defaults: the SDK's typed chat client, httpx for
    chat and embeddings (`close_sdk_httpx_chain` closes its clients)."""
    llm = ChatOpenAI(
        http_async_client=openai.DefaultAsyncHttpxClient(), model="fake", base_url=base_url,
        api_key="x", streaming=True, max_retries=2, timeout=settings.llm_timeout,
    )  # fmt: skip
    embeddings = build_embeddings(settings)
    assert isinstance(embeddings, OpenAIEmbeddings)
    embeddings.http_async_client = openai.DefaultAsyncHttpxClient()
    embeddings.async_client = openai.AsyncOpenAI(
        base_url=base_url, api_key="x", http_client=embeddings.http_async_client
    ).embeddings
    store = copy.copy(chain.store)
    store.embedding_func = embeddings
    other = copy.copy(chain)
    other.store, other.llm = store, llm
    return other


async def close_sdk_httpx_chain(chain: Any) -> None:
    await close_chat_model(chain.llm)
    await close_embeddings(chain.store.embedding_func)


TURNS = 5  # each setup measured in this many turns, alternating


async def measure(target: str, chats: int, profile: bool, top: int) -> None:
    with fake_openai(0.0, 0.0) as base_url, milvus_target(target) as uri:
        assert uri is not None
        settings = chat_settings("remote", uri, base_url)
        async with open_services(settings) as services:
            await ingest_path(ROOT / "sample_docs", services.store, settings)
            assistant = build_chain(services, base_url, "fake")
            chain = assistant.chain
            before = sdk_httpx_chain(chain, settings, base_url)
            try:
                setups = {"sdk+httpx": before, "dicts+aiohttp": chain}
                for each in setups.values():  # warm-up: pools, segments, caches
                    await first_token_cpu(each, QUESTIONS, 20)
                gc.collect()
                gc.freeze()  # as the chat server does once started: no gen-2 walks in figures
                measured = {name: Measured() for name in setups}
                per_turn = max(1, chats // TURNS)
                for _ in range(TURNS):
                    for name, each in setups.items():
                        turn = await first_token_cpu(each, QUESTIONS, per_turn)
                        measured[name].add(turn, 1 / TURNS)
                report(measured, per_turn * TURNS, target)
                if profile:
                    await print_profile(chain, chats, top)
            finally:
                await close_sdk_httpx_chain(before)
                await assistant.aclose()


def report(measured: dict[str, Measured], chats: int, target: str) -> None:
    print(f"CPU per chat, {chats} chats each, Milvus {target} (ms):")
    print("setup           first token (loop thread / process)   whole answer (loop thread)")
    for name, got in measured.items():
        print(f"{name:15s} {got.thread_ms:8.2f} / {got.process_ms:6.2f}"
              f"{'':22s}{got.answer_ms:8.2f}")  # fmt: skip
    old, new = measured["sdk+httpx"], measured["dicts+aiohttp"]
    print(f"ratio dicts+aiohttp / sdk+httpx: first token {new.thread_ms / old.thread_ms:.2f}, "
          f"whole answer {new.answer_ms / old.answer_ms:.2f}")  # fmt: skip


async def print_profile(chain: Any, chats: int, top: int) -> None:
    """cProfile's top functions of the app's setup, until each chat's first token."""
    # CPU time of this thread, not wall time: on a shared machine a wall-clock profile
    # charges other processes' turns to whatever call was running.
    profiler = cProfile.Profile(time.thread_time)
    await first_token_cpu(chain, QUESTIONS, chats, profiler)
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
