"""Running a gold question set against a collection, or the whole chain, and scoring it.

Why: a faster or cheaper change is only an improvement if the right passage still comes
back, so every change to chunking, search mode or prompts can be checked against the same
numbers (``rag eval DATASET``; ``bench/quality.py`` compares configurations side by side).
The question format is in ``rag.eval.dataset``, the figures in ``rag.eval.metrics``, the
report files in ``rag.eval.report``; this module only searches, asks and times.

Follow-ups at retrieval level (no model to condense them) are searched as the last user turn
followed by the question; with ``--answers`` the chain condenses them and the stand-alone
question it produced is scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from rag.errors import CollectionNotFound, RagError
from rag.eval.configs import EvalConfig
from rag.eval.dataset import Dataset, EvalQuestion, load_dataset
from rag.eval.metrics import (
    DEPTH,
    QuestionResult,
    Summary,
    score_answer,
    score_retrieval,
    summarise,
)
from rag.retrieval import effective_mode, retrieve
from rag.store import records

if TYPE_CHECKING:
    from langchain_milvus import Milvus

    from rag.chain import Answer, RagChain

# A run and what it takes and gives; load_dataset too, so that `from rag.eval.run import
# EvalConfig, evaluate_answers, load_dataset` is all a caller needs for one run.
__all__ = [
    "MAX_FAILURES_IN_A_ROW",
    "Dataset",
    "EvalConfig",
    "Progress",
    "Summary",
    "evaluate_answers",
    "evaluate_retrieval",
    "load_dataset",
    "require_documents",
]

MAX_FAILURES_IN_A_ROW = 3  # then the model is down, not slow: `rag eval --answers` stops

Progress = Callable[[str, int, int], None]


async def require_documents(store: Milvus) -> None:
    """An empty collection would score 0 everywhere and look like a retrieval bug."""
    if not await records.count(store, ""):
        raise CollectionNotFound(
            f"collection {store.collection_name!r} is empty: ingest the documents the "
            "questions are about first (rag ingest FOLDER)"
        )


async def evaluate_retrieval(
    store: Milvus,
    dataset: Dataset,
    config: EvalConfig,
    relevance_floor: float,
    progress: Progress | None = None,
) -> Summary:
    """Score retrieval alone: no model is needed, so it runs anywhere in seconds."""
    results: list[QuestionResult] = []
    depth = max(DEPTH, config.k)
    for number, question in enumerate(dataset.questions, 1):
        searched = question.search_text()
        started = time.perf_counter()
        hits = await retrieve(store, searched, config.options(depth))
        seconds = time.perf_counter() - started
        results.append(score_retrieval(question, searched, hits, relevance_floor, seconds))
        if progress:
            progress(config.name, number, len(dataset.questions))
    return summarise(config, effective_mode(store, config.mode), results, answered=False)


async def evaluate_answers(
    chain: RagChain,
    dataset: Dataset,
    config: EvalConfig,
    progress: Progress | None = None,
) -> Summary:
    """Score the whole chain: retrieval of the condensed question, then the answer itself."""
    results: list[QuestionResult] = []
    depth = max(DEPTH, config.k)
    from rag.chain import Answer
    from rag.errors import ModelUnavailable

    failed_in_a_row = 0
    for number, question in enumerate(dataset.questions, 1):
        error: str | None = None
        try:
            answer, first, rate, seconds = await _timed_answer(chain, question, config)
            failed_in_a_row = 0
        except ModelUnavailable as failure:
            # One answer cut off by a slow machine must not throw away an hour of answers;
            # it counts as wrong (neither correct nor refused). A model that is down for
            # good fails every question: stop then, with its reason.
            failed_in_a_row += 1
            if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise
            error, first, rate, seconds = str(failure), None, None, 0.0
            answer = Answer(question.question, question.question, "", [], answered=True)
        hits = await retrieve(chain.store, answer.standalone, config.options(depth))
        retrieved = score_retrieval(
            question, answer.standalone, hits, chain.relevance_floor, seconds
        )
        results.append(
            replace(
                retrieved,
                **score_answer(question, answer),
                first_token=first,
                tokens_per_second=rate,
                error=error,
            )
        )
        if progress:
            progress(config.name, number, len(dataset.questions))
    return summarise(config, effective_mode(chain.store, config.mode), results, answered=True)


async def _timed_answer(
    chain: RagChain, question: EvalQuestion, config: EvalConfig
) -> tuple[Answer, float | None, float | None, float]:
    """The chain's answer with what a person waits for: seconds to the first token and
    tokens/s after it (None for both when the chain refused without asking the model)."""
    from rag.chain import Answer, Retrieved, Token

    started = time.perf_counter()
    first: float | None = None
    last = started
    tokens = 0
    asked = False
    answer: Answer | None = None
    async for event in chain.astream(question.question, question.history, config.options(config.k)):
        if isinstance(event, Retrieved):
            asked = event.relevant
        elif isinstance(event, Token) and asked:
            last = time.perf_counter()
            first = first if first is not None else last - started
            tokens += 1
        elif isinstance(event, Answer):
            answer = event
    if answer is None:  # pragma: no cover - astream always ends with an Answer
        raise RagError("the chain ended without an answer")
    rate = None
    # Checked answers arrive a sentence at a time: their events are no measure of tokens/s.
    if chain.policy.check == "off" and first is not None and tokens > 1 and last - started > first:
        rate = round((tokens - 1) / (last - started - first), 2)
    seconds = time.perf_counter() - started
    return answer, round(first, 3) if first is not None else None, rate, seconds
