"""The gold-question format: read a JSONL file, validate every line, name the first bad one.

Why a pydantic model per row: the format is a schema (which keys, which types, which
combinations), and a declared schema with ``extra="forbid"`` catches a misspelt key such
as ``"sorce"`` that hand-written checks let through as "no source". pydantic's own
messages are generic ("Input should be a valid string"), so each error is reworded into
one line that names the file, the line and the field, in the words of this format.

Format (JSONL: one JSON object per line; blank lines and lines starting with ``#`` are
skipped)::

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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from rag.errors import RagError

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = get_args(Role)
# Stripped before the length check (pydantic-core strips first), so "  " is empty too.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# The error type of the problems this module words itself (see _GoldRow's validators).
_WORDED = "gold_row"
_TURN_SHAPE = "turn_shape"


class DatasetError(RagError):
    """The question file is missing or a line is not a valid question."""

    exit_code = 2


@dataclass(frozen=True)
class EvalQuestion:
    """One validated gold question, as the metrics and the runs use it."""

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


# strict: JSON has no other spelling of a number, a boolean or a string, so "3", 1 for true
# or 2.0 for a page are mistakes in the file, not values to coerce.
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Turn(BaseModel):
    """One earlier turn of a follow-up."""

    model_config = _STRICT

    role: Role
    content: Text

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: Any) -> Any:
        """A turn is written as ``{"role", "content"}`` or as a ``[role, text]`` pair;
        anything else is one problem (its shape), not a missing role and a missing text."""
        if isinstance(value, list) and len(value) == 2:
            return {"role": value[0], "content": value[1]}
        if isinstance(value, dict) and set(value) == {"role", "content"}:
            return value
        raise PydanticCustomError(_TURN_SHAPE, "not a turn")


class _GoldRow(BaseModel):
    """One line of the file as written. The field order is the order problems are
    reported in when a line has several: the first one found is the one shown."""

    model_config = _STRICT

    question: Text
    unanswerable: bool = False
    tags: list[Annotated[str, StringConstraints(min_length=1)]] = []
    history: list[_Turn] = []
    source: Text | None = None
    page: Annotated[int, Field(ge=1)] | None = None
    quote: Text | None = None
    answer: list[Text] = []

    @field_validator("source")
    @classmethod
    def _stored_path(cls, source: str | None) -> str | None:
        """The path as the collection stores it: forward slashes, no leading ``./``."""
        return None if source is None else source.replace("\\", "/").removeprefix("./")

    @field_validator("answer", mode="before")
    @classmethod
    def _accepted_answers(cls, value: Any) -> Any:
        """One answer or a non-empty list of accepted ones; ``[]`` is a bad single answer."""
        if value is None:
            return []
        return value if isinstance(value, list) and value else [value]

    @model_validator(mode="after")
    def _gold_or_unanswerable(self) -> _GoldRow:
        """An answerable question names its source; an unanswerable one names no gold."""
        if self.unanswerable:
            gold = {"source": self.source, "page": self.page, "quote": self.quote}
            given = [key for key, value in gold.items() if value is not None]
            given += ["answer"] if self.answer else []
            if given:
                raise _worded(f"an unanswerable question has no {given[0]!r}")
        elif self.source is None:
            raise _worded("'source' is missing (or set \"unanswerable\": true)")
        return self

    def to_question(self, line: int) -> EvalQuestion:
        return EvalQuestion(
            question=self.question,
            source=self.source,
            page=self.page,
            quote=self.quote,
            answers=tuple(self.answer),
            unanswerable=self.unanswerable,
            tags=tuple(self.tags),
            history=tuple((turn.role, turn.content) for turn in self.history),
            line=line,
        )


KNOWN_KEYS = frozenset(_GoldRow.model_fields)
# How each field's problem is worded, whatever pydantic found wrong with its value.
_FIELD_PROBLEMS = {
    "question": "'question' must be a non-empty string, got {value!r}",
    "unanswerable": "'unanswerable' must be true or false, got {value!r}",
    "tags": "'tags' must be a list of strings, got {value!r}",
    "source": "'source' must be a non-empty string, got {value!r}",
    "page": "'page' must be a whole number from 1, got {value!r}",
    "quote": "'quote' must be a non-empty string, got {value!r}",
    "answer": "'answer' must be a non-empty string, got {value!r}",
}


def _worded(message: str) -> PydanticCustomError:
    # The message goes in through the context: a template is formatted, and the message
    # itself may hold braces.
    return PydanticCustomError(_WORDED, "{message}", {"message": message})


def _first_problem(error: ValidationError, row: object) -> str:
    """The one problem to show: an unknown key first (a typo explains the rest), then the
    first field in the order of _GoldRow."""
    problems = error.errors(include_url=False)
    unknown = sorted(
        str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden" and len(p["loc"]) == 1
    )
    if unknown:
        return f"unknown field {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})"
    return _wording(problems[0], row)


def _wording(problem: ErrorDetails, row: object) -> str:
    loc, value = problem["loc"], problem["input"]
    if problem["type"] == _WORDED:
        return problem["msg"]
    if not loc:
        return f"expected a JSON object, got {type(row).__name__}"
    field = str(loc[0])
    if field == "history":
        return _turn_wording(loc[1:], value)
    if problem["type"] == "missing":
        value = None  # pydantic reports the whole row as the input of a missing key
    elif field == "tags":
        value = row.get("tags") if isinstance(row, dict) else value  # the list, not an item
    return _FIELD_PROBLEMS[field].format(value=value)


def _turn_wording(loc: tuple[int | str, ...], value: object) -> str:
    if not loc:
        return f"'history' must be a list of turns, got {type(value).__name__}"
    number = int(loc[0]) + 1
    if len(loc) == 1:
        return (
            f'history turn {number} must be {{"role": ..., "content": ...}} or '
            f"[role, text], got {value!r}"
        )
    if loc[1] == "role":
        return f"history turn {number}: role must be user or assistant"
    return f"'history turn {number} content' must be a non-empty string, got {value!r}"


def parse_question(row: object, where: str, line: int = 0) -> EvalQuestion:
    """One validated question; every problem names the line and the field."""
    try:
        return _GoldRow.model_validate(row).to_question(line)
    except ValidationError as error:
        raise DatasetError(f"{where}: {_first_problem(error, row)}") from None


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
            message = f"not valid JSON ({error.msg} at column {error.colno})"
            raise DatasetError(f"{where}: {message}") from None
        item = parse_question(row, where, number)
        key = (item.question, item.history)
        if key in seen:
            raise DatasetError(f"{where}: the same question as line {seen[key]}")
        seen[key] = number
        questions.append(item)
    if not questions:
        raise DatasetError(f"dataset {path} has no questions")
    return Dataset(path.stem, str(path), tuple(questions))


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
