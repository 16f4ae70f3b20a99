"""Serving the bundled model on a CPU: which llama.cpp settings shorten the wait.

Each configuration starts its own ``llama_cpp.server`` (through ``rag.local.server``, as the
app does) and sends the same two RAG prompts, built by the app's own prompt templates
from the sample documents: the first is read from scratch (cold), the second shares only
the system prompt with it, which llama.cpp can keep in its KV cache (warm). Time to first
token and tokens/s are printed side by side, with the ratio to the first configuration,
all from one run on one machine.

    python -m bench.local_llm [--model qwen2.5-0.5b] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import publish, save_json
from rag.local.server import LocalLLMServer, physical_cores
from rag.prompts import load_prompts

SAMPLES = Path(__file__).resolve().parents[1] / "sample_docs"
QUESTIONS = [
    ("What is the phone extension of the IT Helpdesk?", "it_helpdesk_guide.txt"),
    ("Where can I park my bicycle at the office?", "office_facilities_guide.txt"),
]
PASSAGE_CHARS = 900  # about one stored chunk


@dataclass(frozen=True)
class Config:
    name: str
    threads: int
    n_batch: int = 512
    n_ctx: int = 4096


def prompt_messages(question: str, source: str) -> list[dict[str, str]]:
    """The app's answer prompt with four passages of the gold file (as retrieval gives)."""
    text = (SAMPLES / source).read_text()
    passages = [text[i : i + PASSAGE_CHARS] for i in range(0, 4 * PASSAGE_CHARS, PASSAGE_CHARS)]
    context = "\n\n".join(f"[{n}] (source: {source})\n{p}" for n, p in enumerate(passages, 1))
    messages = load_prompts().answer.format_messages(context=context, question=question)
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": str(m.content)} for m in messages]


def timed_answer(base_url: str, model: str, messages: list[dict[str, str]]) -> dict[str, float]:
    """Stream one answer; seconds to the first token, tokens/s after it, prompt tokens."""
    body = {"model": model, "messages": messages, "max_tokens": 48, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with urllib.request.urlopen(request, timeout=600) as reply:
        for raw in reply:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk: dict[str, Any] = json.loads(line[6:])
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                last = time.perf_counter() - started
                first = first or last
                tokens += 1
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return {"ttft": first, "tokens_per_s": rate}


def measure(model: str, config: Config) -> dict[str, Any]:
    server = LocalLLMServer(model, n_ctx=config.n_ctx, threads=config.threads,
                            n_batch=config.n_batch)  # fmt: skip
    with server:
        cold = timed_answer(server.base_url, model, prompt_messages(*QUESTIONS[0]))
        warm = timed_answer(server.base_url, model, prompt_messages(*QUESTIONS[1]))
    return {"config": config.name, "cold": cold, "warm": warm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="Two configurations only.")
    args = parser.parse_args(argv)
    cores = physical_cores()
    configs = [
        Config(f"threads={cores} batch=512 ctx=4096", cores),
        Config(f"threads={max(1, cores // 2)}", max(1, cores // 2)),
        Config("batch=128", cores, n_batch=128),
        Config("ctx=2048", cores, n_ctx=2048),
    ]
    if args.quick:
        configs = configs[:2]
    rows = [measure(args.model, config) for config in configs]
    base = rows[0]
    table = []
    for row in rows:
        table.append([
            row["config"],
            f"{row['cold']['ttft']:.2f}", f"{row['cold']['ttft'] / base['cold']['ttft']:.2f}",
            f"{row['warm']['ttft']:.2f}", f"{row['warm']['ttft'] / row['cold']['ttft']:.2f}",
            f"{row['cold']['tokens_per_s']:.1f}",
        ])  # fmt: skip
    columns = ["config", "cold TTFT s", "× first", "warm TTFT s", "warm ÷ cold", "tok/s"]
    notes = [
        f"{args.model}, {cores} physical cores; cold = the first prompt on a fresh server, "
        "warm = a second prompt that shares only the system prompt with it."
    ]
    module = "local_llm"  # one report: the figures of the model last measured
    save_json(module, {"model": args.model, "cores": cores, "rows": rows})
    publish(module, "Serving the bundled model", columns, table, args.quick, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
