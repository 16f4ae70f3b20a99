"""Chat history and feedback in SQL: Chainlit's SQLAlchemy data layer, its tables, the export.

Chainlit 2.12 ships ``SQLAlchemyDataLayer`` but not its schema (the docs print PostgreSQL
DDL), so the tables are created here, once per start, with ``IF NOT EXISTS`` statements that
run unchanged on SQLite and PostgreSQL; only the column types differ per dialect. A column a
newer Chainlit writes but an older table lacks is added, so an upgrade never breaks saving.

Without a blob storage client the data layer drops every element (the side passages behind
``[1]``); ours keeps text elements inline in the ``elements`` row as a ``data:`` URL, which
needs no storage service. The answer's question, text and sources also travel in the answer
message's metadata (``metadata["rag"]``), which is what resuming and the export read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.utils import queue_until_user_message
from sqlalchemy import bindparam, inspect, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rag.errors import HistoryUnavailable, RagError, Service, mask_url_password

if TYPE_CHECKING:
    from chainlit.element import Element

log = logging.getLogger(__name__)

# Where an answer keeps what the chat history, `rag feedback` and resuming need.
META_KEY = "rag"

# Column types per dialect: PostgreSQL gets the types Chainlit documents; SQLite stores
# everything as TEXT (a "UUID" column there would have NUMERIC affinity).
_TYPES = {
    "postgresql": {
        "id": "UUID",
        "json": "JSONB",
        "array": "TEXT[]",
        "int": "INT",
        "time": "TIMESTAMPTZ DEFAULT now()",
    },
    "sqlite": {
        "id": "TEXT",
        "json": "TEXT",
        "array": "TEXT",
        "int": "INTEGER",
        "time": "TEXT DEFAULT CURRENT_TIMESTAMP",
    },
}

# table -> (column, type key or literal SQL type, constraint); every column Chainlit 2.12
# writes (StepDict, ElementDict, Feedback), plus feedbacks.createdAt for the export's time.
_TABLES: dict[str, list[tuple[str, str, str]]] = {
    "users": [
        ("id", "id", "PRIMARY KEY"),
        ("identifier", "TEXT", "NOT NULL UNIQUE"),
        ("metadata", "json", "NOT NULL"),
        ("createdAt", "TEXT", ""),
    ],
    "threads": [
        ("id", "id", "PRIMARY KEY"),
        ("createdAt", "TEXT", ""),
        ("name", "TEXT", ""),
        ("userId", "id", 'REFERENCES users("id") ON DELETE CASCADE'),
        ("userIdentifier", "TEXT", ""),
        ("tags", "array", ""),
        ("metadata", "json", ""),
    ],
    "steps": [
        ("id", "id", "PRIMARY KEY"),
        ("name", "TEXT", "NOT NULL"),
        ("type", "TEXT", "NOT NULL"),
        ("threadId", "id", 'NOT NULL REFERENCES threads("id") ON DELETE CASCADE'),
        ("parentId", "id", ""),
        ("streaming", "BOOLEAN", "NOT NULL"),
        ("waitForAnswer", "BOOLEAN", ""),
        ("isError", "BOOLEAN", ""),
        ("metadata", "json", ""),
        ("tags", "array", ""),
        ("input", "TEXT", ""),
        ("output", "TEXT", ""),
        ("createdAt", "TEXT", ""),
        ("command", "TEXT", ""),
        ("modes", "json", ""),
        ("start", "TEXT", ""),
        ("end", "TEXT", ""),
        ("generation", "json", ""),
        ("showInput", "TEXT", ""),
        ("language", "TEXT", ""),
        ("indent", "int", ""),
        ("defaultOpen", "BOOLEAN", ""),
        ("autoCollapse", "BOOLEAN", ""),
    ],
    "elements": [
        ("id", "id", "PRIMARY KEY"),
        ("threadId", "id", 'REFERENCES threads("id") ON DELETE CASCADE'),
        ("type", "TEXT", ""),
        ("url", "TEXT", ""),
        ("chainlitKey", "TEXT", ""),
        ("name", "TEXT", "NOT NULL"),
        ("display", "TEXT", ""),
        ("objectKey", "TEXT", ""),
        ("size", "TEXT", ""),
        ("page", "int", ""),
        ("language", "TEXT", ""),
        ("forId", "id", ""),
        ("mime", "TEXT", ""),
        ("props", "json", ""),
        ("autoPlay", "BOOLEAN", ""),
        ("playerConfig", "json", ""),
    ],
    "feedbacks": [
        ("id", "id", "PRIMARY KEY"),
        ("forId", "id", "NOT NULL"),
        ("threadId", "id", ""),
        ("value", "int", "NOT NULL"),
        ("comment", "TEXT", ""),
        ("createdAt", "time", ""),
    ],
}
_INDEXES = [
    ("threads", "userId"),
    ("steps", "threadId"),
    ("elements", "threadId"),
    ("feedbacks", "forId"),
]
# Any constant: two UI processes starting at once on one PostgreSQL serialise their DDL on it.
_DDL_LOCK = 7_310_042


def history_service(url: str) -> Service:
    """The chat history database as failures name it (password masked by `rag.errors`)."""
    return Service("history", f"the chat history database at {url}")


def describe(url: str, error: BaseException) -> str:
    """One line naming the database (password masked) and the first line of the cause."""
    cause = getattr(error, "orig", None) or error
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot use the chat history database at {mask_url_password(url)}: {first}"


def _dialect(engine: AsyncEngine) -> str:
    name = engine.dialect.name
    if name not in _TYPES:
        raise HistoryUnavailable(f"unsupported chat history database {name!r}")
    return name


def _sql_type(dialect: str, kind: str) -> str:
    return _TYPES[dialect].get(kind, kind)


def schema_statements(dialect: str) -> list[str]:
    """The idempotent DDL for ``dialect`` ("postgresql" or "sqlite")."""
    statements = []
    for table, columns in _TABLES.items():
        lines = ",\n    ".join(
            f'"{name}" {_sql_type(dialect, kind)} {constraint}'.rstrip()
            for name, kind, constraint in columns
        )
        statements.append(f'CREATE TABLE IF NOT EXISTS "{table}" (\n    {lines}\n)')
    for table, column in _INDEXES:
        statements.append(
            f'CREATE INDEX IF NOT EXISTS "ix_{table}_{column}" ON "{table}" ("{column}")'
        )
    return statements


def _existing_columns(sync_conn: Any) -> dict[str, set[str]]:
    inspector = inspect(sync_conn)
    names = set(inspector.get_table_names())
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in _TABLES if t in names}


async def _create(conn: AsyncConnection, dialect: str) -> None:
    if dialect == "postgresql":
        await conn.execute(text(f"SELECT pg_advisory_xact_lock({_DDL_LOCK})"))
    for statement in schema_statements(dialect):
        await conn.execute(text(statement))
    # Tables made by an older Chainlit lack columns a newer one writes: add them (nullable,
    # no default, which both databases allow on a table that has rows).
    existing = await conn.run_sync(_existing_columns)
    for table, columns in _TABLES.items():
        for name, kind, _ in columns:
            if name not in existing.get(table, {name}):
                sql_type = _sql_type(dialect, kind).split(" DEFAULT")[0]
                try:
                    await conn.execute(
                        text(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {sql_type}')
                    )
                except Exception:
                    # SQLite runs DDL outside a transaction (Python's sqlite3 only opens one
                    # for DML), so a second process starting at the same moment can add the
                    # column between our look and our ALTER ("duplicate column name", seen
                    # once in CI). PostgreSQL cannot race: the advisory lock above.
                    if name not in (await conn.run_sync(_existing_columns)).get(table, set()):
                        raise
                    continue
                log.info("chat history: added column %s.%s", table, name)


async def ensure_schema(engine: AsyncEngine, url: str | None = None) -> None:
    """Create the history tables if missing; safe to run at every start, from many processes."""
    dialect = _dialect(engine)
    try:
        async with engine.begin() as conn:
            await _create(conn, dialect)
    except RagError:
        raise
    except Exception as error:
        raise HistoryUnavailable(describe(url or str(engine.url), error)) from error


def make_engine(url: str) -> AsyncEngine:
    """An engine for ``url``; SQLite waits for a writer instead of failing with "locked"."""
    return create_async_engine(url, connect_args=_connect_args(url))


def _connect_args(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"timeout": 30}
    return {"timeout": 5}  # asyncpg's connect timeout: a dead host fails in seconds


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class HistoryDataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy layer with text elements kept inline and UTC timestamps."""

    def __init__(self, url: str) -> None:
        # The base class warns that elements are lost without a storage client; ours
        # keeps the ones this app makes (text passages), so the warning would mislead.
        with _quiet("chainlit"):
            super().__init__(conninfo=url, connect_args=_connect_args(url))
        self.url = url
        self.schema_ready = False

    async def ensure_schema(self) -> None:
        await ensure_schema(self.engine, self.url)
        self.schema_ready = True

    async def get_current_timestamp(self) -> str:
        # The base class labels local time with "Z"; threads must sort with steps (UTC).
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")

    @queue_until_user_message()  # like the base class: nothing is written before a question
    async def create_element(self, element: Element) -> None:
        content = getattr(element, "content", None)
        if self.storage_provider is not None or not isinstance(content, str):
            await super().create_element(element)
            return
        if not element.for_id:
            return
        await self._store_inline(element, content)

    async def _store_inline(self, element: Element, content: str) -> None:
        """Save a text element with its content as a ``data:`` URL in the ``url`` column."""
        mime = element.mime or "text/plain"
        encoded = base64.b64encode(content.encode("utf-8")).decode("ascii")
        row: dict[str, Any] = {
            k: v for k, v in element.to_dict().items() if v is not None and k != "path"
        }
        row["url"] = f"data:{mime};charset=utf-8;base64,{encoded}"
        row["mime"] = mime
        row.pop("chainlitKey", None)  # names a file of the live session only
        if "props" in row:
            row["props"] = json.dumps(row["props"])
        columns = ", ".join(f'"{c}"' for c in row)
        values = ", ".join(f":{c}" for c in row)
        updates = ", ".join(f'"{c}" = :{c}' for c in row if c != "id")
        await self.execute_sql(
            f"INSERT INTO elements ({columns}) VALUES ({values}) "
            f'ON CONFLICT ("id") DO UPDATE SET {updates}',
            row,
        )


def build_data_layer(url: str) -> HistoryDataLayer:
    return HistoryDataLayer(url)


# --------------------------------------------------------------------------------------------
# Reading history back: resuming a thread, exporting feedback
# --------------------------------------------------------------------------------------------


def loads(value: Any) -> dict[str, Any]:
    """A JSON column as a dict: SQLite (and raw SQL on PostgreSQL) return it as text."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def turns_from_steps(steps: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(question id, role, text) for every answered question of a thread, oldest first.

    Read from the answers' metadata rather than the messages' text: an answer's text also
    holds its sources listing, which must not go back into the condense prompt.
    """
    turns: list[tuple[str, str, str]] = []
    ordered = sorted(steps, key=lambda s: str(s.get("createdAt") or ""))
    for step in ordered:
        if step.get("type") != "assistant_message":
            continue
        meta = loads(step.get("metadata")).get(META_KEY)
        if not isinstance(meta, dict) or not meta.get("answer"):
            continue
        question_id = str(meta.get("question_id") or step.get("parentId") or step.get("id"))
        turns += [
            (question_id, "user", str(meta.get("question", ""))),
            (question_id, "assistant", str(meta["answer"])),
        ]
    return turns


@dataclass
class FeedbackRecord:
    """One thumbs up or down with what it judged."""

    thread_id: str
    user: str | None
    question: str
    answer: str
    sources: list[dict[str, Any]]
    score: str
    comment: str | None
    time: str | None
    standalone_question: str | None = None
    cited: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "user": self.user,
            "question": self.question,
            "answer": self.answer,
            "sources": self.sources,
            "score": self.score,
            "comment": self.comment,
            "time": self.time,
        }

    def source_labels(self) -> str:
        labels = []
        for source in self.sources:
            page = source.get("page")
            labels.append(
                f"{source.get('source')}, page {page}" if page else str(source.get("source"))
            )
        return "; ".join(labels)

    def to_eval(self) -> dict[str, Any]:
        """A line of the eval dataset: the question made stand-alone, the expected source.

        The expected answer is the given answer when it was judged good, and the user's
        comment (their correction, if any) when it was judged bad; blank means "fill in".
        """
        chosen = None
        for number in self.cited or []:
            if 1 <= number <= len(self.sources):
                chosen = self.sources[number - 1]
                break
        if chosen is None and self.sources:
            chosen = self.sources[0]
        line: dict[str, Any] = {
            "question": self.standalone_question or self.question,
            "answer": self.answer if self.score == "up" else (self.comment or ""),
            "source": chosen.get("source") if chosen else None,
        }
        if chosen and chosen.get("page"):
            line["page"] = chosen["page"]
        return line


def _iso(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    text_value = str(value)
    try:
        moment = datetime.fromisoformat(text_value.replace("Z", "+00:00"))
    except ValueError:
        return text_value
    return _iso(moment)


_FEEDBACK_QUERY = """
SELECT f."value" AS value, f."comment" AS comment, {given_at} AS given_at,
       s."id" AS step_id, s."threadId" AS thread_id, s."output" AS output,
       s."metadata" AS metadata, s."createdAt" AS step_at,
       t."userIdentifier" AS user_identifier
FROM feedbacks f
JOIN steps s ON s."id" = f."forId"
LEFT JOIN threads t ON t."id" = s."threadId"
ORDER BY s."createdAt"
"""


async def read_feedback(url: str) -> list[FeedbackRecord]:
    """Every stored feedback with its thread, user, question, answer and sources."""
    not_yet = (
        f"the chat history database at {mask_url_password(url)} has no tables yet; "
        "`rag ui` creates them at its first start"
    )
    database = make_url(url).database
    local = url.startswith("sqlite") and database and database != ":memory:"
    # Connecting to a missing SQLite file would create an empty one.
    if local and not await asyncio.to_thread(Path(str(database)).is_file):
        raise HistoryUnavailable(
            f"no chat history database at {database} yet; `rag ui` creates it at its first start"
        )
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            existing = await conn.run_sync(_existing_columns)
            if any(t not in existing for t in ("threads", "steps", "feedbacks")):
                raise HistoryUnavailable(not_yet)
            given_at = 'f."createdAt"' if "createdAt" in existing["feedbacks"] else "NULL"
            query = _FEEDBACK_QUERY.replace("{given_at}", given_at)
            rows = (await conn.execute(text(query))).mappings().all()
            thread_ids = sorted({str(r["thread_id"]) for r in rows})
            questions: dict[str, list[tuple[str, str]]] = {}
            if thread_ids:
                query = text(
                    'SELECT "threadId" AS thread_id, "output" AS output, "createdAt" AS at '
                    "FROM steps WHERE \"type\" = 'user_message' AND "
                    'CAST("threadId" AS TEXT) IN :ids ORDER BY "createdAt"'
                ).bindparams(bindparam("ids", expanding=True))
                for row in (await conn.execute(query, {"ids": thread_ids})).mappings():
                    questions.setdefault(str(row["thread_id"]), []).append(
                        (str(row["at"] or ""), str(row["output"] or ""))
                    )
    except RagError:
        raise
    except Exception as error:
        raise HistoryUnavailable(describe(url, error)) from error
    finally:
        await engine.dispose()
    records = []
    for row in rows:
        meta = loads(row["metadata"]).get(META_KEY) or {}
        thread_id = str(row["thread_id"])
        question = meta.get("question")
        if not question:  # feedback on a message that is not an answer: the question before it
            before = [q for at, q in questions.get(thread_id, []) if at <= str(row["step_at"])]
            question = before[-1] if before else ""
        records.append(
            FeedbackRecord(
                thread_id=thread_id,
                user=row["user_identifier"],
                question=str(question),
                answer=str(meta.get("answer") or row["output"] or ""),
                sources=list(meta.get("sources") or []),
                score="up" if int(row["value"]) >= 1 else "down",
                comment=row["comment"] or None,
                time=_iso(row["given_at"]) or _iso(row["step_at"]),
                standalone_question=meta.get("standalone"),
                cited=[int(n) for n in meta.get("cited") or []],
            )
        )
    return records
