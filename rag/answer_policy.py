"""How answers are made and checked: one vocabulary for settings, chain and evaluation.

Kept apart from ``rag.chain`` so that the settings can name these choices without
importing LangChain, and so ``rag eval`` compares exactly what the chat runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

from rag.extractive import DEFAULT_MIN_SCORE
from rag.grounding import DEFAULT_MIN_SUPPORT

# How an answer is made: by the chat model, by quoting the passages (``rag.extractive``), or
# by the model with the quote as the fallback when the check leaves nothing of its answer.
AnswerMode = Literal["generate", "extract", "generate-or-extract"]
# What is done with sentences the passages do not back (``rag.grounding``).
CheckMode = Literal["mark", "refuse", "off"]


@dataclass(frozen=True)
class AnswerPolicy:
    """How answers are made and checked (``RAG_ANSWER_*``; defaults chosen by `rag eval`)."""

    mode: AnswerMode = "generate"
    check: CheckMode = "off"
    min_support: float = DEFAULT_MIN_SUPPORT
    min_quote_score: float = DEFAULT_MIN_SCORE
    context_chars: int = 0  # 0: whole passages; else the budget of ``rag.context.trim``

    def summary(self) -> str:
        """One line for reports: ``mode=… check=… min_support=…``."""
        return " ".join(f"{name}={value}" for name, value in asdict(self).items())


# What the bundled models read of the passages: about 400 tokens, a few seconds on 2 cores.
BUNDLED_CONTEXT_CHARS = 1500

ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)
CHECK_MODES: tuple[str, ...] = get_args(CheckMode)
