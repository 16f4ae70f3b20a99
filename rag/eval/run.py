"""Answer quality as numbers: run a gold question set against a collection and score it.

Why: a faster or cheaper change is only an improvement if the right passage still comes
back, so every change to chunking, search mode or prompts can be checked against the same
numbers (``rag eval DATASET``; ``bench/quality.py`` compares configurations side by side).

Dataset format (JSONL: one JSON object per line; blank lines and lines starting with ``#``
are skipped)::

    {"question": "What does error code E-342 mean?",
     "source": "products/flightcore_error_codes.md", "answer": "Motor stall detected",
     "tags": ["exact-id"]}
    {"question": "Who approves a claim of EUR 1,200?", "source": "employee_handbook_2025.pdf",
     "page": 3, "quote": "up to EUR 5,000", "answer": "Ilse Brouwer"}
    {"question": "and above EUR 5,000?", "source": "employee_handbook_2025.pdf", "page": 3,
     "answer": "Oluwaseun Adebayo-Hart", "tags": ["follow-up"],
     "history": [{"role": "user", "content": "Who approves a claim of EUR 1,200?"},
                 {"role": "assistant", "content": "Your line manager and Ilse Brouwer [1]."}]}
    {"question": "What is the pension contribution?", "unanswerable": true}

- ``question`` (required): the user's question.
- ``source``: the gold file as it is stored in the collection, i.e. its path relative to the
  ingested folder with forward slashes (what ``rag search`` shows). Required unless
  ``unanswerable`` is true.
- ``page`` (optional, PDFs): the hit must also be on this page (1-based).
- ``quote`` (optional): the hit must also contain this text (compared normalised).
- ``answer``: the gold answer string (or a list of accepted strings); with ``--answers`` the
  model's answer must contain it after normalisation (case, whitespace, punctuation, number
  formats such as ``1,200`` = ``1200``, ``€`` = ``EUR``, ``eight`` = ``8``). Keep it short:
  the fact, not a sentence.
- ``unanswerable: true``: the documents do not answer it; the right outcome is a refusal.
- ``tags`` (optional): labels for per-tag figures, e.g. ``exact-id``, ``paraphrase``,
  ``follow-up``, ``two-chunk``.
- ``history`` (optional): earlier turns of a follow-up, as ``{"role", "content"}`` objects or
  ``[role, text]`` pairs, oldest first.

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

Follow-ups at retrieval level (no model to condense them) are searched as the last user turn
followed by the question; with ``--answers`` the chain condenses them and the stand-alone
question it produced is scored.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.answer.text import citations, contains, says_refusal
from rag.choices import SearchMode
from rag.errors import CollectionNotFound, RagError
from rag.retrieval import RRF_K, Hit, SearchOptions, effective_mode, retrieve
from rag.store import records

if TYPE_CHECKING:
    from langchain_milvus import Milvus

    from rag.chain import Answer, RagChain
    from rag.config import Settings

DEPTH = 10  # every ranking metric looks at the top 10
RECALL_AT = (1, 3, 5, 8, 10)
KNOWN_KEYS = {"question", "source", "page", "quote", "answer", "unanswerable", "tags", "history"}
ROLES = {"user", "assistant"}
MAX_FAILURES_IN_A_ROW = 3  # then the model is down, not slow: `rag eval --answers` stops


class DatasetError(RagError):
    """The question file is missing or a line is not a valid question."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    source: str | None = None
    page: int | None = None
    quote: str | None = None
    answers: tuple[str, ...] = ()
    unanswerable: bool = False
    tags: tuple[str, ...] = ()
    history: tuple[tuple[str, str], ...] = ()
    line: int = 0

    def search_text(self) -> str:
        """What retrieval-only evaluation searches for: follow-ups get their last user turn."""
        users = [text for role, text in self.history if role == "user"]
        return f"{users[-1]} {self.question}" if users else self.question


@dataclass(frozen=True)
class Dataset:
    name: str
    path: str
    questions: tuple[EvalQuestion, ...]

    @property
    def answerable(self) -> list[EvalQuestion]:
        return [q for q in self.questions if not q.unanswerable]

    @property
    def unanswerable(self) -> list[EvalQuestion]:
        return [q for q in self.questions if q.unanswerable]


def _problem(where: str, message: str) -> DatasetError:
    return DatasetError(f"{where}: {message}")


def _text(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _problem(where, f"{key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _history(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise _problem(where, f"'history' must be a list of turns, got {type(value).__name__}")
    turns: list[tuple[str, str]] = []
    for number, turn in enumerate(value, 1):
        if isinstance(turn, dict) and set(turn) == {"role", "content"}:
            role, content = turn["role"], turn["content"]
        elif isinstance(turn, list) and len(turn) == 2:
            role, content = turn
        else:
            raise _problem(
                where,
                f'history turn {number} must be {{"role": ..., "content": ...}} or '
                f"[role, text], got {turn!r}",
            )
        if role not in ROLES:
            raise _problem(where, f"history turn {number}: role must be user or assistant")
        turns.append((role, _text(content, f"history turn {number} content", where)))
    return tuple(turns)


def parse_question(row: object, where: str, line: int = 0) -> EvalQuestion:
    """One validated question; every problem names the line and the field."""
    if not isinstance(row, dict):
        raise _problem(where, f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - KNOWN_KEYS)
    if unknown:
        raise _problem(
            where, f"unknown field {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    question = _text(row.get("question"), "question", where)
    unanswerable = row.get("unanswerable", False)
    if not isinstance(unanswerable, bool):
        raise _problem(where, f"'unanswerable' must be true or false, got {unanswerable!r}")
    tags = row.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise _problem(where, f"'tags' must be a list of strings, got {tags!r}")
    history = _history(row["history"], where) if "history" in row else ()
    if unanswerable:
        extra = [k for k in ("source", "page", "quote", "answer") if row.get(k) is not None]
        if extra:
            raise _problem(where, f"an unanswerable question has no {extra[0]!r}")
        return EvalQuestion(
            question, unanswerable=True, tags=tuple(tags), history=history, line=line
        )
    if row.get("source") is None:
        raise _problem(where, "'source' is missing (or set \"unanswerable\": true)")
    source = _text(row["source"], "source", where).replace("\\", "/").removeprefix("./")
    page = row.get("page")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int) or page < 1):
        raise _problem(where, f"'page' must be a whole number from 1, got {page!r}")
    quote = _text(row["quote"], "quote", where) if row.get("quote") is not None else None
    raw = row.get("answer")
    if raw is None:
        answers: tuple[str, ...] = ()
    elif isinstance(raw, list) and raw:
        answers = tuple(_text(a, "answer", where) for a in raw)
    else:
        answers = (_text(raw, "answer", where),)
    return EvalQuestion(question, source, page, quote, answers, False, tuple(tags), history, line)


def load_dataset(path: Path | str) -> Dataset:
    """Read and validate a JSONL question file; the first bad line stops it with its number."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such dataset file: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read dataset {path}: {error}") from error
    questions: list[EvalQuestion] = []
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for number, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise _problem(where, f"not valid JSON ({error.msg} at column {error.colno})") from None
        item = parse_question(row, where, number)
        key = (item.question, item.history)
        if key in seen:
            raise _problem(where, f"the same question as line {seen[key]}")
        seen[key] = number
        questions.append(item)
    if not questions:
        raise DatasetError(f"dataset {path} has no questions")
    return Dataset(path.stem, str(path), tuple(questions))


# --------------------------------------------------------------------------------------------
# Matching and metrics
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Configurations and running
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """One retrieval configuration to score; ``k`` is what the model would be given."""

    mode: SearchMode = "dense"
    k: int = 5
    mmr: bool = False
    ranker: str = "rrf"
    dense_weight: float = 0.6
    fetch_k: int = 20
    rrf_k: int = RRF_K
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        mode = f"hybrid-{self.ranker}" if self.mode == "hybrid" else self.mode
        return f"{mode} k={self.k}" + (" mmr" if self.mmr else "")

    def options(self, k: int) -> SearchOptions:
        return SearchOptions(
            k=k,
            mmr=self.mmr,
            fetch_k=max(self.fetch_k, k),
            mode=self.mode,
            ranker=self.ranker,  # type: ignore[arg-type]
            dense_weight=self.dense_weight,
            rrf_k=self.rrf_k,
        )


def config_from_mode(mode: str, k: int, mmr: bool, settings: Settings) -> EvalConfig:
    """A config from a CLI mode name: dense, bm25, hybrid (configured ranker), hybrid-rrf,
    hybrid-weighted."""
    ranker = settings.hybrid_ranker
    if mode.startswith("hybrid-"):
        mode, ranker = "hybrid", mode.removeprefix("hybrid-")
    return EvalConfig(
        mode=mode,  # type: ignore[arg-type]
        k=k,
        mmr=mmr,
        ranker=ranker,
        dense_weight=settings.hybrid_dense_weight,
        fetch_k=settings.fetch_k,
        rrf_k=settings.hybrid_rrf_k,
    )


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


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def _share(results: Sequence[QuestionResult], flag: str) -> float | None:
    """Share of ``results`` whose ``flag`` is true; None when there is nothing to count."""
    return _mean(float(bool(getattr(r, flag))) for r in results) if results else None


def summarise(
    config: EvalConfig, effective: str, results: list[QuestionResult], answered: bool
) -> Summary:
    gold = [r for r in results if not r.unanswerable]
    none = [r for r in results if r.unanswerable]
    tags = sorted({t for r in gold for t in r.tags})
    answers: dict[str, float | None] | None = None
    if answered:
        replied = [r for r in results if r.refused_answer is False]
        answers = {
            "correct": _share([r for r in gold if r.answer_correct is not None], "answer_correct"),
            "refused-ok": _share(none, "refused_answer"),
            "false-refusal": _share(gold, "refused_answer"),
            "citations-valid": _share(replied, "citations_valid"),
            "cited": _share(replied, "cited"),
            "cites-gold": _share([r for r in replied if not r.unanswerable], "cites_gold"),
            **_speed(results),
        }
    return Summary(
        config=config.name,
        mode=config.mode,
        effective_mode=effective,
        k=config.k,
        mmr=config.mmr,
        questions=len(results),
        answerable=len(gold),
        unanswerable=len(none),
        recall={k: _mean(recall_at(r.rank, k) for r in gold) for k in RECALL_AT},
        recall_at_k=_mean(recall_at(r.rank, config.k) for r in gold),
        mrr=_mean(reciprocal_rank(r.rank) for r in gold),
        ndcg=_mean(ndcg(r.rank) for r in gold),
        no_answer_accuracy=_mean(float(r.refused_retrieval) for r in none) if none else None,
        false_refusals=sum(r.refused_retrieval for r in gold),
        tag_recall5={
            tag: (
                _mean(recall_at(r.rank, 5) for r in gold if tag in r.tags),
                sum(tag in r.tags for r in gold),
            )
            for tag in tags
        },
        mean_seconds=_mean(r.seconds for r in results),
        answers=answers,
        results=results,
    )


def _percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile: an observed value, no interpolation between two runs."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _speed(results: Sequence[QuestionResult]) -> dict[str, float | None]:
    """Time to first token (p50/p95) and tokens/s over the questions the model was asked."""
    firsts = [r.first_token for r in results if r.first_token is not None]
    rates = [r.tokens_per_second for r in results if r.tokens_per_second is not None]
    return {
        "ttft-p50": _percentile(firsts, 0.5),
        "ttft-p95": _percentile(firsts, 0.95),
        "tokens/s": _percentile(rates, 0.5),
    }


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
        results.append(_scored(question, searched, hits, relevance_floor, seconds))
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
        result = _scored(question, answer.standalone, hits, chain.relevance_floor, seconds)
        _score_answer(result, question, answer)
        result.first_token, result.tokens_per_second, result.error = first, rate, error
        results.append(result)
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


def _scored(
    question: EvalQuestion, searched: str, hits: list[Hit], floor: float, seconds: float
) -> QuestionResult:
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


def _score_answer(result: QuestionResult, question: EvalQuestion, answer: Answer) -> None:
    numbers = citations(answer.text)
    result.answer = answer.text
    result.draft = answer.draft if answer.draft != answer.text else None
    result.refused_answer = refuses(answer)
    result.citations_valid = all(1 <= n <= len(answer.hits) for n in numbers)
    result.cited = bool(numbers)
    if question.unanswerable:
        return
    if question.answers:
        result.answer_correct = not result.refused_answer and any(
            contains(answer.text, gold) for gold in question.answers
        )
    result.cites_gold = any(
        is_hit(answer.hits[n - 1], question) for n in numbers if 1 <= n <= len(answer.hits)
    )


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def headline(summaries: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the main table (one row per configuration)."""
    columns = ["config", "R@1", "R@5", "R@10", "R@k", "MRR@10", "nDCG@10", "no-answer"]
    answer_keys = [
        "correct", "refused-ok", "false-refusal", "citations-valid", "cites-gold",
        "ttft-p50", "ttft-p95", "tokens/s",
    ]  # fmt: skip
    with_answers = any(s.answers for s in summaries)
    if with_answers:
        columns += [f"ans {k}" for k in answer_keys]
    rows = []
    for s in summaries:
        name = s.config + (f" (ran {s.effective_mode})" if s.effective_mode != s.mode else "")
        ranked = [*(s.recall[k] for k in (1, 5, 10)), s.recall_at_k, s.mrr, s.ndcg]
        # Without answerable questions there is nothing to rank: "–", not a misleading 0.
        row = [name, *(_cell(v if s.answerable else None) for v in ranked)]
        row.append(_cell(s.no_answer_accuracy))
        if with_answers:
            row += [_cell((s.answers or {}).get(k)) for k in answer_keys]
        rows.append(row)
    return columns, rows


def tag_table(summaries: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    tags = sorted({t for s in summaries for t in s.tag_recall5})
    columns = ["config", *(f"{t} (n={_tag_n(summaries, t)})" for t in tags)]
    rows = [
        [s.config, *(_cell(s.tag_recall5[t][0]) if t in s.tag_recall5 else "–" for t in tags)]
        for s in summaries
    ]
    return columns, rows


def _tag_n(summaries: Sequence[Summary], tag: str) -> int:
    return max(s.tag_recall5.get(tag, (0.0, 0))[1] for s in summaries)


def markdown_table(columns: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table: the first ``left`` columns are labels, the others right-aligned."""
    escape = str.maketrans({"|": "\\|"})
    lines = ["| " + " | ".join(c.translate(escape) for c in columns) + " |"]
    lines.append("|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|")
    lines += ["| " + " | ".join(c.translate(escape) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(
    dataset: Dataset, summaries: Sequence[Summary], context: dict[str, Any], title: str = ""
) -> str:
    """A report to commit or paste into a pull request."""
    first = summaries[0]
    parts = [
        f"# {title or f'Answer quality: {dataset.name}'}",
        "",
        f"Dataset `{dataset.name}`: {first.questions} questions "
        f"({first.answerable} answerable, {first.unanswerable} unanswerable). "
        + ", ".join(f"{k}: `{v}`" for k, v in context.items()),
        "",
        "R@k = recall at each configuration's own k (the passages the model is given); "
        "no-answer = unanswerable questions refused "
        "(best score below the relevance floor, or with answers: the model declined).",
        "",
        markdown_table(*headline(summaries)),
        "",
        *(
            ["## Recall@5 by tag", "", markdown_table(*tag_table(summaries)), ""]
            if any(s.tag_recall5 for s in summaries)
            else []
        ),
        "## Misses (answerable questions with no hit in the top 10)",
        "",
    ]
    for s in summaries:
        missed = [r for r in s.results if not r.unanswerable and r.rank is None]
        wrongly = [r for r in s.results if r.unanswerable and not r.refused_retrieval]
        parts.append(
            f"- **{s.config}**: {len(missed)} missed"
            + (f" (lines {', '.join(str(r.line) for r in missed)})" if missed else "")
            + f"; {len(wrongly)} unanswerable above the floor"
            + (f" (lines {', '.join(str(r.line) for r in wrongly)})" if wrongly else "")
        )
    return "\n".join(parts) + "\n"


def json_report(
    dataset: Dataset, summaries: Sequence[Summary], context: dict[str, Any]
) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "path": dataset.path,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "context": context,
        "summaries": [s.to_dict() for s in summaries],
    }


def write_reports(
    out_dir: Path,
    stem: str,
    dataset: Dataset,
    summaries: Sequence[Summary],
    context: dict[str, Any],
    title: str = "",
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    report = json_report(dataset, summaries, context)
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    md_path.write_text(markdown_report(dataset, summaries, context, title), "utf-8")
    return json_path, md_path


def subset(
    dataset: Dataset, limit: int | None = None, tags: Sequence[str] = (), every: int = 1
) -> Dataset:
    """The questions with any of ``tags`` (all when none), every ``every``-th of them (a
    sample spread over the whole file, answerable and unanswerable alike, for models too
    slow to answer all), at most ``limit`` of them."""
    chosen = [q for q in dataset.questions if not tags or set(tags) & set(q.tags)]
    chosen = chosen[:: max(1, every)]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise DatasetError(f"no question in {dataset.path} has the tags {', '.join(tags)}")
    return replace(dataset, questions=tuple(chosen))
