"""The figures of an evaluation: pure functions from ranks, hits and answers to numbers.

Metrics (over answerable questions; a *hit* is a retrieved chunk whose ``source`` is the
gold source and, when given, whose page and quote match too):

- recall@k: share of questions with at least one hit in the top k. With one gold passage per
  question this is the hit rate.
- MRR@10: mean of 1 / rank of the first hit (0 when none in the top 10).
- nDCG@10: binary gain, one relevant item per question (the gold passage; further chunks of
  the same passage add nothing), so it is 1 / log2(1 + rank of the first hit). It rewards a
  high rank more gently than MRR does.
- no-answer accuracy: share of unanswerable questions refused. Without a model, refused means
  the best score is below ``relevance_floor`` (the chain would not ask the model); with
  ``--answers``, the chain's answer is NOTHING_FOUND or says it does not know.

Nothing here searches or asks a model (``rag.eval.run`` does), so every figure can be
checked by hand from a few made-up results.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rag.answer.text import citations, contains, says_refusal

if TYPE_CHECKING:
    from rag.chain import Answer
    from rag.eval.configs import EvalConfig
    from rag.eval.dataset import EvalQuestion
    from rag.retrieval import Hit

DEPTH = 10  # every ranking metric looks at the top 10
RECALL_AT = (1, 3, 5, 8, 10)


def is_hit(hit: Hit, question: EvalQuestion) -> bool:
    """A retrieved chunk that holds the gold passage: same source, and page/quote if given."""
    if hit.source != question.source:
        return False
    if question.page is not None and hit.page != question.page:
        return False
    return question.quote is None or contains(hit.document.page_content, question.quote)


def first_rank(hits: Sequence[Hit], question: EvalQuestion) -> int | None:
    """1-based rank of the first hit, None when no retrieved chunk matches."""
    return next((n for n, hit in enumerate(hits, 1) if is_hit(hit, question)), None)


def recall_at(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None, depth: int = DEPTH) -> float:
    return 1.0 / rank if rank is not None and rank <= depth else 0.0


def ndcg(rank: int | None, depth: int = DEPTH) -> float:
    """nDCG with one relevant item: its ideal rank is 1, so IDCG = 1."""
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= depth else 0.0


def refuses(answer: Answer) -> bool:
    """The chain declined: nothing above the floor, or the model said it does not know."""
    return not answer.answered or says_refusal(answer.text)


@dataclass
class QuestionResult:
    line: int
    question: str
    tags: list[str]
    unanswerable: bool
    searched: str
    rank: int | None
    best_score: float | None
    refused_retrieval: bool
    top_sources: list[str]
    seconds: float
    # Filled in with --answers only.
    answer: str | None = None
    draft: str | None = None  # what the model wrote, when the grounding check changed it
    error: str | None = None  # the model failed on this question (counted as wrong)
    refused_answer: bool | None = None
    answer_correct: bool | None = None
    citations_valid: bool | None = None
    cited: bool | None = None
    cites_gold: bool | None = None
    # Seconds from the question to the first token the model wrote (None when the chain
    # refused before asking it), and the model's writing speed after that.
    first_token: float | None = None
    tokens_per_second: float | None = None


def score_retrieval(
    question: EvalQuestion, searched: str, hits: list[Hit], floor: float, seconds: float
) -> QuestionResult:
    """One question's retrieval figures: rank of the gold passage, best score, refusal."""
    best = max((h.score for h in hits), default=None)
    return QuestionResult(
        line=question.line,
        question=question.question,
        tags=list(question.tags),
        unanswerable=question.unanswerable,
        searched=searched,
        rank=None if question.unanswerable else first_rank(hits, question),
        best_score=round(best, 4) if best is not None else None,
        refused_retrieval=best is None or best < floor,
        top_sources=[h.label() for h in hits[:5]],
        seconds=round(seconds, 4),
    )


def score_answer(question: EvalQuestion, answer: Answer) -> dict[str, Any]:
    """One answer's figures, as the QuestionResult fields they fill in: refused, citations
    in range, the gold answer in the text, a citation of the gold passage."""
    numbers = citations(answer.text)
    refused = refuses(answer)
    scores: dict[str, Any] = {
        "answer": answer.text,
        "draft": answer.draft if answer.draft != answer.text else None,
        "refused_answer": refused,
        "citations_valid": all(1 <= n <= len(answer.hits) for n in numbers),
        "cited": bool(numbers),
    }
    if question.unanswerable:
        return scores
    if question.answers:
        scores["answer_correct"] = not refused and any(
            contains(answer.text, gold) for gold in question.answers
        )
    scores["cites_gold"] = any(
        is_hit(answer.hits[n - 1], question) for n in numbers if 1 <= n <= len(answer.hits)
    )
    return scores


@dataclass
class Summary:
    """The figures of one configuration over one dataset."""

    config: str
    mode: str
    effective_mode: str
    k: int
    mmr: bool
    questions: int
    answerable: int
    unanswerable: int
    recall: dict[int, float]
    recall_at_k: float
    mrr: float
    ndcg: float
    no_answer_accuracy: float | None
    false_refusals: int
    tag_recall5: dict[str, tuple[float, int]]
    mean_seconds: float
    answers: dict[str, float | None] | None = None
    results: list[QuestionResult] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The headline figures, flat, for tables."""
        answers = self.answers or {}
        return {
            "config": self.config,
            **{f"R@{k}": self.recall[k] for k in (1, 5, 10)},
            "R@k": self.recall_at_k,
            "MRR@10": self.mrr,
            "nDCG@10": self.ndcg,
            "no-answer": self.no_answer_accuracy,
            **({f"answer {k}": v for k, v in answers.items()}),
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recall"] = {f"@{k}": v for k, v in self.recall.items()}
        data["tag_recall5"] = {t: {"recall@5": r, "n": n} for t, (r, n) in self.tag_recall5.items()}
        return data


def mean(values: Iterable[float]) -> float:
    """The mean, 0 for no values: a metric over no questions shows as 0, not an error."""
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def share(results: Sequence[QuestionResult], flag: str) -> float | None:
    """Share of ``results`` whose ``flag`` is true; None when there is nothing to count."""
    return mean(float(bool(getattr(r, flag))) for r in results) if results else None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile: an observed value, no interpolation between two runs."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def speed(results: Sequence[QuestionResult]) -> dict[str, float | None]:
    """Time to first token (p50/p95) and tokens/s over the questions the model was asked."""
    firsts = [r.first_token for r in results if r.first_token is not None]
    rates = [r.tokens_per_second for r in results if r.tokens_per_second is not None]
    return {
        "ttft-p50": percentile(firsts, 0.5),
        "ttft-p95": percentile(firsts, 0.95),
        "tokens/s": percentile(rates, 0.5),
    }


def answer_figures(results: Sequence[QuestionResult]) -> dict[str, float | None]:
    """The answer columns of a report (``--answers``): correct, refusals, citations, speed."""
    gold = [r for r in results if not r.unanswerable]
    none = [r for r in results if r.unanswerable]
    replied = [r for r in results if r.refused_answer is False]
    return {
        "correct": share([r for r in gold if r.answer_correct is not None], "answer_correct"),
        "refused-ok": share(none, "refused_answer"),
        "false-refusal": share(gold, "refused_answer"),
        "citations-valid": share(replied, "citations_valid"),
        "cited": share(replied, "cited"),
        "cites-gold": share([r for r in replied if not r.unanswerable], "cites_gold"),
        **speed(results),
    }


def summarise(
    config: EvalConfig, effective: str, results: list[QuestionResult], answered: bool
) -> Summary:
    """The figures of one configuration from its per-question results."""
    gold = [r for r in results if not r.unanswerable]
    none = [r for r in results if r.unanswerable]
    tags = sorted({t for r in gold for t in r.tags})
    return Summary(
        config=config.name,
        mode=config.mode,
        effective_mode=effective,
        k=config.k,
        mmr=config.mmr,
        questions=len(results),
        answerable=len(gold),
        unanswerable=len(none),
        recall={k: mean(recall_at(r.rank, k) for r in gold) for k in RECALL_AT},
        recall_at_k=mean(recall_at(r.rank, config.k) for r in gold),
        mrr=mean(reciprocal_rank(r.rank) for r in gold),
        ndcg=mean(ndcg(r.rank) for r in gold),
        no_answer_accuracy=mean(float(r.refused_retrieval) for r in none) if none else None,
        false_refusals=sum(r.refused_retrieval for r in gold),
        tag_recall5={
            tag: (
                mean(recall_at(r.rank, 5) for r in gold if tag in r.tags),
                sum(tag in r.tags for r in gold),
            )
            for tag in tags
        },
        mean_seconds=mean(r.seconds for r in results),
        answers=answer_figures(results) if answered else None,
        results=results,
    )
