"""Part 4: many chats at once. Time to first token (TTFT) and answers/s for 1, 10, 50
concurrent full chains (retrieve + streamed answer from a fake LLM at a fixed token rate).

If anything blocked the event loop (query embedding, a sync Milvus call), TTFT would
grow with the number of chats; the goal is p95 at 50 chats within 2x of a single chat.
A 10 ms ticker task measures the loop's lag during each level, so "the loop was never
blocked" is measured, not inferred. TTFT also grows without any blocking call: every
chat costs this process some CPU before its first token, and one GIL runs that work
one chat at a time, so the CPU per chat is measured too (``--diagnose`` additionally
names any loop callback over 50 ms).

Modes, side by side in one run:
- ``remote``: query embeddings from the fake OpenAI-compatible server with a short
  50-100 ms latency (an endpoint nearby): concurrency overlaps that I/O, which is what
  the 2x goal tests, and the CPU each chat costs weighs most against it;
- ``api``: latencies of a hosted API, as the issue describes one (150-300 ms per
  embedding request) and a first token 0.4 s after the request;
- ``local``: the bundled ONNX model, CPU-bound: on a 2-core machine 50 query
  embeddings and 50 searches must queue for the CPU, however async the code is.
Milvus targets: ``lite`` (milvus-lite 3 runs its gRPC server as Python threads *inside
this process*, sharing the GIL with the event loop) and ``lite-server`` (the same
engine in its own process, as a real Milvus would be). A ``+gcfreeze`` suffix calls
``gc.freeze()`` after start-up, as an experiment: full garbage collections over the
long-lived objects otherwise stall the loop for 0.1-0.3 s at a time. A ``×N`` (or ``xN``)
suffix (server targets only) splits each level over N processes that share the Milvus server,
as N chat-server replicas behind one address would: the lever beyond one GIL.

    python -m bench.serving [--quick] [--modes remote@lite,remote@lite-server+gcfreeze,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import re
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import charts
from bench.report import (
    RESULTS,
    CpuMeter,
    LoopLag,
    Measured,
    first_token_cpu,
    markdown_table,
    percentile,
    publish,
    save_json,
    tolerate_lite_keepalive,
)
from bench.services import fake_openai, milvus_target
from ingest.pipeline import ingest_path
from rag.app import build_chain
from rag.chain import Answer, Retrieved, Token
from rag.config import Settings, load_settings
from rag.services import open_services

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "Who needs to approve an expense claim of €1,200?",
    "What does error E-342 mean?",
    "How far can the Heron QH-640 fly with a full payload?",
    "What is our travel insurance policy number?",
    "How do I reset my VPN token?",
]
# Seconds per embedding request ± jitter, and before the LLM's first token, per mode.
# ``remote`` is a fast endpoint (a nearby vLLM/Ollama); ``api`` what the issue calls near
# a real API (150-300 ms per embedding request) with a hosted model's first token.
LATENCIES = {"remote": (0.075, 0.025, 0.0), "api": (0.2, 0.05, 0.4), "local": (0.0, 0.0, 0.0)}
GOAL = 2.0  # p95 TTFT at the highest level / p95 TTFT of one chat
# The full run: without and with gc.freeze (as the UI does), one process against two
# replicas, a nearby endpoint against a hosted API's latencies, and the bundled model.
DEFAULT_MODES = (
    "remote@lite,remote@lite-server+gcfreeze,api@lite+gcfreeze,api@lite-server+gcfreeze×2,"
    "local@lite+gcfreeze"
)
# --quick: the goal's case only (a hosted API's latencies), answers streamed 4x faster
# and fewer single-chat samples, so the whole `rag bench --quick` stays within minutes.
QUICK_MODES = "api@lite+gcfreeze"
SLOW_CALLBACK = 0.05  # seconds; --diagnose names every loop callback that ran longer


@dataclass
class Level:
    mode: str
    chats: int
    ttfts: list[float]
    retrievals: list[float]
    answered: int
    elapsed: float
    lag: LoopLag
    cpu: CpuMeter

    @property
    def p50(self) -> float:
        return statistics.median(self.ttfts)

    @property
    def p95(self) -> float:
        return percentile(self.ttfts, 0.95)

    @property
    def retrieval_p95(self) -> float:
        return percentile(self.retrievals, 0.95)

    @property
    def rate(self) -> float:
        return len(self.ttfts) / self.elapsed


async def one_chat(chain: Any, question: str) -> tuple[float, float, bool]:
    """TTFT of one full chain, the time until its passages were retrieved, and whether
    the LLM answered (not the below-floor reply)."""
    started = time.perf_counter()
    first = retrieved = 0.0
    async for event in chain.astream(question):
        if isinstance(event, Retrieved):
            retrieved = time.perf_counter() - started
        elif isinstance(event, Token) and not first:
            first = time.perf_counter() - started
        elif isinstance(event, Answer):
            return first, retrieved, event.answered
    return first, retrieved, False


@contextlib.contextmanager
def chat_server(mode: str, token_delay: float) -> Iterator[str]:
    """One fake server for the LLM (and, in remote mode, the embeddings)."""
    latency, jitter, first = LATENCIES[mode]
    with fake_openai(
        latency, jitter, chat_token_delay=token_delay, chat_first_token_delay=first
    ) as base_url:
        yield base_url


class SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's "Executing <...> took N seconds" warnings.

    Loop lag alone cannot tell one blocking call from a queue of many short ones; in
    debug mode asyncio names every callback that ran longer than a threshold.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        took = re.search(r"took ([0-9.]+) seconds", message)
        if took:
            where = re.sub(r" at 0x[0-9a-f]+|0x[0-9a-f]+", "", message.split(" took ")[0])
            self.seen.append((float(took.group(1)), where[:160]))

    def summary(self) -> str:
        if not self.seen:
            return "none"
        worst = max(self.seen)
        return f"{len(self.seen)}, longest {worst[0] * 1000:.0f} ms: `{worst[1]}`"


def chat_settings(mode: str, uri: str, base_url: str) -> Settings:
    overrides: dict[str, object] = {
        "milvus_uri": uri,
        "llm_base_url": base_url,
        # Every chat streams an LLM answer: the fake server's bag-of-words vectors
        # score lower than MiniLM's, and a below-floor reply skips the LLM.
        "relevance_floor": 0.0,
    }
    if mode != "local":
        overrides |= {"embedding_provider": "openai", "embedding_base_url": base_url,
                      "embedding_dimensions": 384}  # fmt: skip
    return load_settings(**overrides)


async def ready_chain(
    settings: Settings, base_url: str, freeze: bool, ingest: bool, stack: contextlib.AsyncExitStack
) -> Any:
    """A warmed-up chain, as a started chat server has one; ``stack`` closes it."""
    services = await stack.enter_async_context(open_services(settings))
    if ingest:
        await ingest_path(ROOT / "sample_docs", services.store, settings)
    assistant = build_chain(services, base_url, "fake")
    stack.push_async_callback(assistant.aclose)
    chain = assistant.chain
    for question in QUESTIONS:  # warm-up: connections, ONNX session, Milvus segments
        await one_chat(chain, question)
    await asyncio.gather(*(one_chat(chain, q) for q in QUESTIONS * 2))  # a wider pool
    if freeze:
        # What a server would do once started: everything alive now (modules, models,
        # clients) moves out of the collector's sight, so a full collection no longer
        # walks ~300k long-lived objects while chats wait (gen-2 pauses of 0.1-0.3 s).
        gc.collect()
        gc.freeze()
    return chain


async def chats_at_once(chain: Any, chats: int, rounds: int) -> dict[str, Any]:
    """``rounds`` times, ``chats`` chats started together; TTFTs and the loop's lag."""
    ttfts: list[float] = []
    retrievals: list[float] = []
    answered = 0
    async with LoopLag().watch() as lag:
        for _ in range(rounds):
            results = await asyncio.gather(
                *(one_chat(chain, QUESTIONS[i % len(QUESTIONS)]) for i in range(chats))
            )
            ttfts += [first for first, _, _ in results]
            retrievals += [retrieved for _, retrieved, _ in results]
            answered += sum(ok for _, _, ok in results)
    return {"ttfts": ttfts, "retrievals": retrievals, "answered": answered, "lags": lag.lags}


async def in_processes(job: dict[str, Any], processes: int, meter: CpuMeter) -> dict[str, Any]:
    """The same level split over several processes, as several chat-server replicas
    behind one address would serve it: each starts and warms up, then all go at once."""
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.serving", "--worker", json.dumps(job), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]  # fmt: skip
    for worker in workers:
        assert worker.stdout is not None
        if (await worker.stdout.readline()).strip() != b"ready":
            raise RuntimeError("a serving worker did not start")
    meter.start()  # start-up and warm-up are not measured
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
    merged: dict[str, Any] = {"ttfts": [], "retrievals": [], "answered": 0, "lags": []}
    for worker in workers:
        assert worker.stdout is not None
        got = json.loads(await worker.stdout.readline())
        for key in ("ttfts", "retrievals", "lags"):
            merged[key] += got[key]
        merged["answered"] += got["answered"]
    meter.stop()  # while the workers live: an exited process' CPU is no longer counted
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.close()
        await worker.wait()
    return merged


async def worker(job: dict[str, Any]) -> None:
    """One replica of ``in_processes``: report "ready", wait for "go", print results."""
    settings = chat_settings(job["mode"], job["uri"], job["base_url"])
    async with contextlib.AsyncExitStack() as stack:
        chain = await ready_chain(settings, job["base_url"], job["freeze"], False, stack)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        print(json.dumps(await chats_at_once(chain, job["chats"], job["rounds"])), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # until the parent has read its CPU meter


async def run_mode(
    mode: str,
    target: str,
    levels: list[int],
    rounds: dict[int, int],
    token_delay: float,
    diagnose: bool = False,
    freeze: bool = False,
    processes: int = 1,
) -> tuple[list[Level], Measured]:
    label = f"{mode}@{target}" + ("+gcfreeze" if freeze else "")
    label += f"×{processes}" if processes > 1 else ""
    out: list[Level] = []
    if diagnose:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = SLOW_CALLBACK
    async with contextlib.AsyncExitStack() as stack:
        base_url = stack.enter_context(chat_server(mode, token_delay))
        uri = stack.enter_context(milvus_target(target))
        if uri is None:
            return [], Measured()
        settings = chat_settings(mode, uri, base_url)
        chain = await ready_chain(settings, base_url, freeze, True, stack)
        chats = 5 if rounds[min(rounds)] < 30 else 20
        await first_token_cpu(chain, QUESTIONS, chats)  # one after another, as bench.chat_cpu
        cpu_per_chat = await first_token_cpu(chain, QUESTIONS, chats)
        for level in levels:
            meter = CpuMeter()
            if processes > 1 and level >= processes:
                job = {"mode": mode, "uri": uri, "base_url": base_url, "freeze": freeze,
                       "chats": level // processes, "rounds": rounds[level]}  # fmt: skip
                got = await in_processes(job, processes, meter)
            else:
                meter.start()
                got = await chats_at_once(chain, level, rounds[level])
                meter.stop()
            lag = LoopLag(lags=got["lags"])
            out.append(Level(label, level, got["ttfts"], got["retrievals"], got["answered"],
                             meter.wall, lag, meter))  # fmt: skip
    return out, cpu_per_chat


def latency_note() -> str:
    return "; ".join(
        f"`{mode}` {embed * 1000:.0f} ± {jitter * 1000:.0f} ms and {first * 1000:.0f} ms"
        for mode, (embed, jitter, first) in LATENCIES.items()
        if mode != "local"
    )


def chart(levels: list[Level], path: Path) -> Path:
    """p95 TTFT, p95 against a single chat (the goal), and the loop's max lag, vs chats."""
    fig, (ttft_ax, ratio_ax, lag_ax) = charts.figure(3, width=5.0, height=4.4)
    modes = list(dict.fromkeys(level.mode for level in levels))
    chats = sorted({level.chats for level in levels})
    by = {(level.mode, level.chats): level for level in levels}
    common = {"xlabel": "concurrent chats", "logx": True}
    charts.lines(ttft_ax, chats, {m: [by[m, c].p95 * 1000 for c in chats] for m in modes},
                 ylabel="p95 time to first token, ms", title="TTFT p95", **common)  # fmt: skip
    charts.lines(ratio_ax, chats,
                 {m: [by[m, c].p95 / by[m, chats[0]].p95 for c in chats] for m in modes},
                 ylabel="p95 TTFT / single-chat p95",
                 title=f"p95 vs one chat (goal ≤ {GOAL:.0f}× at 50, dotted)", **common)  # fmt: skip
    ratio_ax.axhline(GOAL, color="black", linestyle=":", linewidth=1)
    charts.lines(lag_ax, chats, {m: [by[m, c].lag.max_ms for c in chats] for m in modes},
                 ylabel="max event-loop lag, ms", title="Longest stall of a 10 ms ticker",
                 **common)  # fmt: skip
    return charts.save(fig, path, "Concurrent chats: retrieve + streamed answer (fake LLM)")


def main() -> None:
    tolerate_lite_keepalive()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--modes", help=f"embeddings@milvus, comma-separated ({DEFAULT_MODES})")
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument("--token-delay", type=float, help="seconds (0.02; 0.005 in --quick)")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="asyncio debug mode: name callbacks over 50 ms (slows the run)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a replica (in_processes)
    args = parser.parse_args()
    if args.worker:
        tolerate_lite_keepalive()
        asyncio.run(worker(json.loads(args.worker)))
        return
    modes = args.modes or (QUICK_MODES if args.quick else DEFAULT_MODES)
    if args.token_delay is None:
        args.token_delay = 0.005 if args.quick else 0.02
    levels = [int(x) for x in args.levels.split(",")]
    # Enough samples per level for a p95; a single chat is cheap, so repeat it more.
    # The p95 of the single chat is the goal's yardstick: 40 samples (20 in --quick).
    rounds = {level: max(2 if args.quick else 3, (20 if args.quick else 40) // level)
              for level in levels}  # fmt: skip
    measured: list[Level] = []
    cpu: dict[str, Measured] = {}
    slow: dict[str, SlowCallbacks] = {}
    for spec in modes.split(","):
        replicas = re.fullmatch(r"(.*?)(?:[×x](\d+))?", spec)
        assert replicas is not None
        spec, processes = replicas[1], int(replicas[2] or 1)
        spec, freeze = spec.removesuffix("+gcfreeze"), spec.endswith("+gcfreeze")
        mode, _, target = spec.partition("@")
        target = target or "lite"
        label = f"{mode}@{target}" + ("+gcfreeze" if freeze else "")
        label += f"×{processes}" if processes > 1 else ""
        slow[label] = handler = SlowCallbacks()
        logging.getLogger("asyncio").addHandler(handler)
        try:
            got, cpu[label] = asyncio.run(
                run_mode(
                    mode,
                    target,
                    levels,
                    rounds,
                    args.token_delay,
                    args.diagnose,
                    freeze,
                    processes,
                )
            )
        finally:
            logging.getLogger("asyncio").removeHandler(handler)
            gc.unfreeze()
        measured += got
    rows = []
    base = {level.mode: level.p95 for level in measured if level.chats == levels[0]}
    by_spec = {(level.mode, level.chats): level.p95 for level in measured}
    for level in measured:
        ratio = level.p95 / base[level.mode]
        met = "" if level.chats != levels[-1] else (" met" if ratio <= GOAL else " NOT met")
        c = level.cpu
        rows.append([level.mode, str(level.chats), f"{len(level.ttfts)}",
                     f"{level.p50 * 1000:.0f}", f"{level.p95 * 1000:.0f}",
                     f"{ratio:.2f}×{met}", f"{level.retrieval_p95 * 1000:.0f}",
                     f"{level.rate:.1f}", f"{level.lag.max_ms:.0f} / {level.lag.p99_ms:.0f}",
                     f"{c.cores('client'):.2f} / {c.cores('Milvus'):.2f} / "
                     f"{c.cores('embedding server'):.2f}",
                     f"{level.answered}/{len(level.ttfts)}"])  # fmt: skip
    notes = [
        f"Goal: p95 TTFT at {levels[-1]} chats ≤ {GOAL:.0f}× the single-chat p95. Latency per "
        f"embedding request and before the LLM's first token: {latency_note()}; LLM: fake "
        f"server, {args.token_delay * 1000:.0f} ms between tokens. Loop lag: how late "
        "a 10 ms ticker woke (max / p99). Retrieved: time until the passages were found "
        "(query embedding + search), the part of TTFT before the LLM call. CPU: cores busy on "
        "average in this process (client, and Milvus Lite when in-process) / a separate "
        "Milvus process / the fake OpenAI server (embeddings and LLM).",
    ]
    top = levels[-1]
    notes += [
        "",
        f"CPU of this process per chat, question to first token (chats one at a time, "
        "`bench.report.first_token_cpu`, as `bench.chat_cpu` measures it): on the event-loop "
        "thread, which one GIL runs for every chat, and in the whole process (also gRPC's "
        f"threads, and Milvus Lite's engine when it runs in this process); what {top} chats "
        "arriving together need of the loop thread, beside the measured p95 TTFT increase "
        "over a single chat. Questions that arrive together are embedded as one batch (one "
        "ONNX run, or one request to an endpoint) and searched as one Milvus request per "
        "filter, so those chats share that part of the CPU (`python -m bench.chat_cpu "
        "--profile` shows where the rest goes):",
        "",
        *markdown_table(
            ["embeddings@milvus", "CPU ms per chat: loop thread / process",
             f"{top} × loop thread ms", f"measured p95 increase at {top} ms"],
            [[spec, f"{cpu[spec].thread_ms:.1f} / {cpu[spec].process_ms:.1f}",
              f"{cpu[spec].thread_ms * top:.0f}",
              f"{(by_spec[spec, top] - base[spec]) * 1000:.0f}"]
             for spec in cpu if (spec, top) in by_spec],
        ),
    ]  # fmt: skip
    if args.diagnose:
        notes += ["", f"Loop callbacks over {SLOW_CALLBACK * 1000:.0f} ms (asyncio debug mode, "
                  "whole run including ingest and warm-up): "
                  + "; ".join(f"{spec}: {h.summary()}" for spec, h in slow.items())]  # fmt: skip
    path = chart(measured, RESULTS / "serving.png")
    save_json("serving", [
        {"mode": level.mode, "chats": level.chats, "p50": level.p50, "p95": level.p95,
         "vs_single": level.p95 / base[level.mode], "answers_per_s": level.rate,
         "loop_lag_max_ms": level.lag.max_ms, "goal": GOAL,
         "cpu_ms_per_chat": cpu.get(level.mode, Measured()).thread_ms,
         "cpu_ms_per_chat_process": cpu.get(level.mode, Measured()).process_ms}
        for level in measured
    ])  # fmt: skip
    publish("serving", "Concurrent chats: time to first token (ms)",
            ["embeddings@milvus", "chats", "samples", "TTFT p50", "TTFT p95",
             "p95 / single p95", "retrieved p95", "answers/s", "loop lag max / p99 ms",
             "CPU cores client / Milvus / fake OpenAI", "LLM answered"],
            rows, args.quick, notes, path)  # fmt: skip


if __name__ == "__main__":
    main()
