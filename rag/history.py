"""Chat history and feedback in SQL: Chainlit's SQLAlchemy data layer, its tables, the export.

The tables and their migrations are `rag.history_schema`'s; the data layer brings them up
to date once per start (`HistoryDataLayer.ensure_schema`), so an upgrade never breaks saving.

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
from sqlalchemy import Text, cast, make_url, null, select
from sqlalchemy.exc import SQLAlchemyError

from rag.errors import HistoryUnavailable, explain, mask_url_password
from rag.history_schema import (
    connect_args,
    ensure_schema,
    existing_columns,
    feedbacks,
    history_service,
    make_engine,
    steps,
    threads,
)

if TYPE_CHECKING:
    from chainlit.element import Element
    from sqlalchemy import Select

# Where an answer keeps what the chat history, `rag feedback` and resuming need.
META_KEY = "rag"


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
            super().__init__(conninfo=url, connect_args=connect_args(url))
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


def _feedback_query(feedback_columns: set[str]) -> Select[Any]:
    """Each feedback with the step it judged and that step's thread, oldest step first."""
    # A feedbacks table made before createdAt was added, and not yet migrated by `rag ui`.
    given_at = feedbacks.c.createdAt if "createdAt" in feedback_columns else null()
    return (
        select(
            feedbacks.c.value,
            feedbacks.c.comment,
            given_at.label("given_at"),
            steps.c.threadId.label("thread_id"),
            steps.c.output,
            steps.c.metadata,
            steps.c.createdAt.label("step_at"),
            threads.c.userIdentifier.label("user_identifier"),
        )
        .select_from(
            feedbacks.join(steps, steps.c.id == feedbacks.c.forId).outerjoin(
                threads, threads.c.id == steps.c.threadId
            )
        )
        .order_by(steps.c.createdAt)
    )


def _questions_query(thread_ids: list[str]) -> Select[Any]:
    """The user's messages of ``thread_ids``, oldest first."""
    return (
        select(steps.c.threadId.label("thread_id"), steps.c.output, steps.c.createdAt.label("at"))
        .where(steps.c.type == "user_message", cast(steps.c.threadId, Text).in_(thread_ids))
        .order_by(steps.c.createdAt)
    )


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
            existing = await conn.run_sync(existing_columns)
            if any(t.name not in existing for t in (threads, steps, feedbacks)):
                raise HistoryUnavailable(not_yet)
            query = _feedback_query(existing[feedbacks.name])
            rows = (await conn.execute(query)).mappings().all()
            thread_ids = sorted({str(r["thread_id"]) for r in rows})
            questions: dict[str, list[tuple[str, str]]] = {}
            if thread_ids:
                for row in (await conn.execute(_questions_query(thread_ids))).mappings():
                    questions.setdefault(str(row["thread_id"]), []).append(
                        (str(row["at"] or ""), str(row["output"] or ""))
                    )
    # asyncpg's connection failures arrive as OSError, not wrapped by SQLAlchemy.
    except (SQLAlchemyError, OSError) as error:
        raise explain(error, history_service(url)) from error
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
