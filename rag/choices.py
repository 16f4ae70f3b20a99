"""The choices a user makes by name, and the measured defaults behind them.

One home for each vocabulary: settings validate against these Literals, the CLI builds
its options from these tuples, the chat labels its settings from these tables, and the
evaluation compares exactly these. It imports nothing of the project, so every layer
(the store and `ingest` included) can use it.
"""

from __future__ import annotations

from typing import Literal, get_args

# --- search (rag.retrieval) ---------------------------------------------------------
SearchMode = Literal["dense", "bm25", "hybrid"]
# How hybrid search fuses its dense and BM25 lists.
Ranker = Literal["rrf", "weighted"]
SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
RANKERS: tuple[Ranker, ...] = get_args(Ranker)
# `rag eval --mode` also names the hybrid ranker: hybrid-rrf, hybrid-weighted.
EVAL_MODES: tuple[str, ...] = (*SEARCH_MODES, *(f"hybrid-{ranker}" for ranker in RANKERS))
# The chat's settings panel (short labels) and its welcome page (a phrase in a sentence).
SEARCH_LABELS: dict[SearchMode, str] = {
    "dense": "Meaning (dense vectors)",
    "bm25": "Keywords (BM25)",
    "hybrid": "Both (hybrid)",
}
SEARCH_WORDS: dict[SearchMode, str] = {
    "dense": "by meaning (dense vectors)",
    "bm25": "by keywords (BM25 full-text search)",
    "hybrid": "by meaning and keywords together (hybrid dense + BM25)",
}

# --- answers (rag.answer) -------------------------------------------------------------
# How an answer is made: by the chat model, by quoting the passages (rag.answer.extractive),
# or by the model with the quote as the fallback when the check leaves nothing of its answer.
AnswerMode = Literal["generate", "extract", "generate-or-extract"]
# What is done with sentences the passages do not back (rag.answer.grounding).
CheckMode = Literal["mark", "refuse", "off"]
ANSWER_MODES: tuple[AnswerMode, ...] = get_args(AnswerMode)
CHECK_MODES: tuple[CheckMode, ...] = get_args(CheckMode)
# Chosen with `rag eval --answers` and bench/grounding.py on both gold sets (README, Quality):
# the share of a sentence's content words its passages must hold,
DEFAULT_MIN_SUPPORT = 0.6
# the score floor of the best sentence an extractive answer quotes,
DEFAULT_MIN_QUOTE_SCORE = 0.6
# and what the bundled models read of the passages: about 400 tokens, seconds on 2 cores.
BUNDLED_CONTEXT_CHARS = 1500
