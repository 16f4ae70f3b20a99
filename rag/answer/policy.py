"""How answers are made and checked, as one object the chain and `rag eval` share.

The names of the choices live in `rag.choices`; this turns settings into the policy the
chain runs, so `rag eval` compares exactly what the chat runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from rag.choices import (
    BUNDLED_CONTEXT_CHARS,
    DEFAULT_MIN_QUOTE_SCORE,
    DEFAULT_MIN_SUPPORT,
    AnswerMode,
    CheckMode,
)

if TYPE_CHECKING:
    from rag.config import Settings


@dataclass(frozen=True)
class AnswerPolicy:
    """How answers are made and checked (``RAG_ANSWER_*``; defaults chosen by `rag eval`)."""

    mode: AnswerMode = "generate"
    check: CheckMode = "off"
    min_support: float = DEFAULT_MIN_SUPPORT
    min_quote_score: float = DEFAULT_MIN_QUOTE_SCORE
    context_chars: int = 0  # 0: whole passages; else the budget of ``rag.answer.context.trim``

    def summary(self) -> str:
        """One line for reports: ``mode=… check=… min_support=…``."""
        return " ".join(f"{name}={value}" for name, value in asdict(self).items())


def answer_policy(settings: Settings, *, bundled: bool) -> AnswerPolicy:
    """How answers are made for this model: ``bundled`` = one of the CPU models.

    "auto" checks and trims for the bundled models only: they run on a CPU and invent; an
    endpoint's model gets whole passages and its answer is shown as written.
    """
    check = settings.answer_check
    if check == "auto":
        check = "mark" if bundled else "off"
    context = settings.context_chars
    if context is None:
        context = BUNDLED_CONTEXT_CHARS if bundled else 0
    return AnswerPolicy(
        mode=settings.answer_mode,
        check=check,
        min_support=settings.answer_min_support,
        min_quote_score=settings.answer_min_quote_score,
        context_chars=context,
    )
