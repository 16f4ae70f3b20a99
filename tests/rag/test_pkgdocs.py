"""bench.pkgdocs and its gold set: the corpus builds, and every gold fact is really in it.

Fast (no model, no Milvus): the corpus is the installed packages' metadata, so a wrong
answer, a quote that drifted with a package upgrade, or an "unanswerable" question the
text does answer shows up here before it skews an evaluation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.pkgdocs import PACKAGES, build, file_name, long_description
from rag.answer.text import contains
from rag.eval.dataset import Dataset, load_dataset

QUESTIONS = Path(__file__).resolve().parents[1] / "data" / "pkgdocs_questions.jsonl"
EVERY_FILE = "*"

# Words that would answer each unanswerable question (matched whole-word, normalised as
# the evaluator does) and must not occur in its package's file ("*": in any file).
ABSENT: dict[str, tuple[str, tuple[str, ...]]] = {
    "default timeout of a request made with HTTPX": ("httpx.md", ("default timeout", "timeout=")),
    "pooled connections in an HTTPX client": ("httpx.md", ("max_connections", "limits")),
    "Rich console as an HTML file": ("rich.md", ("save_html", "export_html", "export")),
    "default spinner animation": ("rich.md", ("default spinner", "dots")),
    "callback in Typer": ("typer.md", ("callback",)),
    "maximum dimension of a FLOAT_VECTOR": ("milvus-lite.md", ("maximum dimension", "32768")),
    "aiosqlite database to WAL": ("aiosqlite.md", ("WAL", "journal")),
    "pytest-xdist": ("pytest-timeout.md", ("xdist",)),
    "database backends does SQLAlchemy": (
        "sqlalchemy.md",
        ("PostgreSQL", "MySQL", "SQLite", "Oracle", "dialect"),
    ),
    "port the Chainlit server": ("chainlit.md", ("port", "--port")),
    "password login to a Chainlit": ("chainlit.md", ("password", "login", "auth")),
    "debounce time of watchfiles": ("watchfiles.md", ("debounce",)),
    "largest .env file": ("python-dotenv.md", ("file size", "maximum size", "too large")),
    "using tenacity": (EVERY_FILE, ("tenacity",)),
    "2018 FIFA World Cup": (EVERY_FILE, ("World Cup", "FIFA")),
    "capital city of Australia": (EVERY_FILE, ("Canberra",)),
    "Kubernetes ingress": (EVERY_FILE, ("Kubernetes", "ingress")),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    built = build(tmp_path_factory.mktemp("pkgdocs"))
    assert built.warnings == [], "the installed versions differ from bench/pkgdocs.py"
    return {path.name: path.read_text(encoding="utf-8") for path in built.written}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(QUESTIONS)


def test_builder_writes_one_file_per_package(corpus: dict[str, str]) -> None:
    assert set(corpus) == {file_name(package) for package in PACKAGES}
    assert corpus["typer.md"] == long_description("typer")
    assert 50_000 < sum(len(text) for text in corpus.values()) < 250_000


def test_builder_warns_instead_of_failing(tmp_path: Path) -> None:
    built = build(tmp_path, {"typer": "0.0.1", "no-such-package-pkgdocs": "1.0"})
    assert [path.name for path in built.written] == ["typer.md"]
    assert len(built.warnings) == 2
    assert "0.0.1" in built.warnings[0]
    assert "not installed" in built.warnings[1]


def test_dataset_sizes(dataset: Dataset) -> None:
    assert len(dataset.answerable) >= 40
    assert len(dataset.unanswerable) >= 15
    assert sum("on-topic" in q.tags for q in dataset.unanswerable) >= 10


def test_gold_answers_and_quotes_are_in_their_source(
    dataset: Dataset, corpus: dict[str, str]
) -> None:
    """The first accepted answer is the text's own wording (later ones are other spellings a
    model may use); the quote picks the passage the retrieval metric counts as a hit."""
    for question in dataset.answerable:
        where = f"line {question.line}"
        assert question.source in corpus, where
        text = corpus[question.source]
        assert question.answers and contains(text, question.answers[0]), where
        assert question.quote and contains(text, question.quote), where


def test_unanswerable_questions_are_not_answered(dataset: Dataset, corpus: dict[str, str]) -> None:
    for question in dataset.unanswerable:
        keys = [key for key in ABSENT if key in question.question]
        assert len(keys) == 1, f"line {question.line}: list its answering words in ABSENT"
        source, terms = ABSENT[keys[0]]
        texts = corpus.values() if source == EVERY_FILE else [corpus[source]]
        for term in terms:
            assert not any(contains(text, term) for text in texts), (question.line, term)
