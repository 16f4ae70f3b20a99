"""The chat history schema: created at the latest version, older databases migrated in order.

Real databases only: SQLite files in a temp dir, and a throwaway PostgreSQL cluster
(``tests/support/postgres.py``) when the server binaries are installed. An "older install"
is written with the raw SQL the hand-written DDL ran before the schema was versioned, and
with the smaller tables of an older Chainlit's documented DDL.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import chainlit as cl
import pytest
from chainlit.types import Feedback
from sqlalchemy import Connection, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from rag.errors import HistoryUnavailable
from rag.history import HistoryDataLayer, read_feedback
from rag.history_schema import (
    CHAT_TABLES,
    LATEST,
    MIGRATIONS,
    Migration,
    ensure_schema,
    make_engine,
    schema_versions,
    upgrade,
)

# The DDL `rag ui` ran before the schema had versions, exactly as it was (per-dialect types
# filled in below): what a real older install has on disk.
OLD_DDL = """
CREATE TABLE IF NOT EXISTS "users" (
    "id" {id} PRIMARY KEY,
    "identifier" TEXT NOT NULL UNIQUE,
    "metadata" {json} NOT NULL,
    "createdAt" TEXT
);
CREATE TABLE IF NOT EXISTS "threads" (
    "id" {id} PRIMARY KEY,
    "createdAt" TEXT,
    "name" TEXT,
    "userId" {id} REFERENCES users("id") ON DELETE CASCADE,
    "userIdentifier" TEXT,
    "tags" {array},
    "metadata" {json}
);
CREATE TABLE IF NOT EXISTS "steps" (
    "id" {id} PRIMARY KEY,
    "name" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "threadId" {id} NOT NULL REFERENCES threads("id") ON DELETE CASCADE,
    "parentId" {id},
    "streaming" BOOLEAN NOT NULL,
    "waitForAnswer" BOOLEAN,
    "isError" BOOLEAN,
    "metadata" {json},
    "tags" {array},
    "input" TEXT,
    "output" TEXT,
    "createdAt" TEXT,
    "command" TEXT,
    "modes" {json},
    "start" TEXT,
    "end" TEXT,
    "generation" {json},
    "showInput" TEXT,
    "language" TEXT,
    "indent" {int},
    "defaultOpen" BOOLEAN,
    "autoCollapse" BOOLEAN
);
CREATE TABLE IF NOT EXISTS "elements" (
    "id" {id} PRIMARY KEY,
    "threadId" {id} REFERENCES threads("id") ON DELETE CASCADE,
    "type" TEXT,
    "url" TEXT,
    "chainlitKey" TEXT,
    "name" TEXT NOT NULL,
    "display" TEXT,
    "objectKey" TEXT,
    "size" TEXT,
    "page" {int},
    "language" TEXT,
    "forId" {id},
    "mime" TEXT,
    "props" {json},
    "autoPlay" BOOLEAN,
    "playerConfig" {json}
);
CREATE TABLE IF NOT EXISTS "feedbacks" (
    "id" {id} PRIMARY KEY,
    "forId" {id} NOT NULL,
    "threadId" {id},
    "value" {int} NOT NULL,
    "comment" TEXT,
    "createdAt" {time}
);
CREATE INDEX IF NOT EXISTS "ix_threads_userId" ON "threads" ("userId");
CREATE INDEX IF NOT EXISTS "ix_steps_threadId" ON "steps" ("threadId");
CREATE INDEX IF NOT EXISTS "ix_elements_threadId" ON "elements" ("threadId");
CREATE INDEX IF NOT EXISTS "ix_feedbacks_forId" ON "feedbacks" ("forId");
"""
OLD_TYPES = {
    "sqlite": {
        "id": "TEXT",
        "json": "TEXT",
        "array": "TEXT",
        "int": "INTEGER",
        "time": "TEXT DEFAULT CURRENT_TIMESTAMP",
    },
    "postgresql": {
        "id": "UUID",
        "json": "JSONB",
        "array": "TEXT[]",
        "int": "INT",
        "time": "TIMESTAMPTZ DEFAULT now()",
    },
}

# Tables from an older Chainlit's documented DDL: no indexes, no elements table, and
# users, steps and feedbacks without the columns added since (feedbacks.createdAt is ours).
OLDER_CHAINLIT_DDL = """
CREATE TABLE users ("id" TEXT PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE,
    "metadata" TEXT NOT NULL);
CREATE TABLE threads ("id" TEXT PRIMARY KEY, "createdAt" TEXT, "name" TEXT, "userId" TEXT,
    "userIdentifier" TEXT, "tags" TEXT, "metadata" TEXT);
CREATE TABLE steps ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL,
    "threadId" TEXT NOT NULL, "parentId" TEXT, "streaming" BOOLEAN NOT NULL,
    "waitForAnswer" BOOLEAN, "isError" BOOLEAN, "metadata" TEXT, "tags" TEXT, "input" TEXT,
    "output" TEXT, "createdAt" TEXT, "start" TEXT, "end" TEXT, "generation" TEXT,
    "showInput" TEXT, "language" TEXT, "indent" INTEGER);
CREATE TABLE feedbacks ("id" TEXT PRIMARY KEY, "forId" TEXT NOT NULL, "threadId" TEXT,
    "value" INTEGER NOT NULL, "comment" TEXT);
"""

USER_ID, THREAD_ID, QUESTION_ID, ANSWER_ID, FEEDBACK_ID = (
    "7f8a1c1e-0000-4000-8000-00000000000" + str(n) for n in range(5)
)


def _statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


def _old_ddl(dialect: str) -> list[str]:
    return _statements(OLD_DDL.format(**OLD_TYPES[dialect]))


def _old_rows(json_value: str) -> list[str]:
    """One user, thread, question, answer and thumbs down, as the data layer wrote them."""
    meta = json_value.format(
        '{"rag": {"question": "Who rotates the key?", "answer": "Olga does.", '
        '"sources": [{"source": "falcon.txt"}]}}'
    )
    return [
        f'INSERT INTO users ("id", "identifier", "metadata", "createdAt") VALUES '
        f"('{USER_ID}', 'alice', {json_value.format('{}')}, '2026-11-30T10:00:00Z')",
        f'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier") VALUES '
        f"('{THREAD_ID}', '2026-11-30T10:00:01Z', 'Who rotates the key?', '{USER_ID}', 'alice')",
        f'INSERT INTO steps ("id", "name", "type", "threadId", "streaming", "output", '
        f"\"createdAt\") VALUES ('{QUESTION_ID}', 'alice', 'user_message', '{THREAD_ID}', "
        "false, 'Who rotates the key?', '2026-11-30T10:00:02Z')",
        f'INSERT INTO steps ("id", "name", "type", "threadId", "parentId", "streaming", '
        f'"output", "metadata", "createdAt") VALUES (\'{ANSWER_ID}\', \'Assistant\', '
        f"'assistant_message', '{THREAD_ID}', '{QUESTION_ID}', false, 'Olga does.', {meta}, "
        "'2026-11-30T10:00:03Z')",
        f'INSERT INTO feedbacks ("id", "forId", "value") VALUES '
        f"('{FEEDBACK_ID}', '{ANSWER_ID}', 0)",
    ]


async def _run(engine: AsyncEngine, statements: list[str]) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


def _snapshot_sync(conn: Connection) -> dict[str, Any]:
    """Everything the schema decides, and every row: two equal snapshots, one database."""
    inspector = inspect(conn)
    names = sorted(inspector.get_table_names())
    return {
        "tables": names,
        "columns": {
            t: [
                (
                    c["name"],
                    c["type"].compile(dialect=conn.dialect),
                    c["nullable"],
                    str(c.get("default")),
                )
                for c in inspector.get_columns(t)
            ]
            for t in names
        },
        "indexes": {
            t: sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(t))
            for t in names
        },
        "rows": {
            t: sorted(
                tuple(str(v) for v in row)
                for row in conn.execute(text(f'SELECT * FROM "{t}"')).all()
            )
            for t in names
            if t != schema_versions.name
        },
        "versions": [
            (row.version, row.description)
            for row in conn.execute(select(schema_versions).order_by(schema_versions.c.version))
        ]
        if schema_versions.name in names
        else [],
    }


async def _snapshot(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        return await conn.run_sync(_snapshot_sync)


def _without_versions(by_table: dict[str, Any]) -> dict[str, Any]:
    return {t: v for t, v in by_table.items() if t != schema_versions.name}


def _declared() -> dict[str, list[str]]:
    return {t.name: [c.name for c in t.columns] for t in CHAT_TABLES}


def _declared_indexes() -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    return {
        t.name: sorted((str(i.name), tuple(c.name for c in i.columns)) for i in t.indexes)
        for t in CHAT_TABLES
    }


def _applied(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The migration versions the log says were applied, in the order they ran."""
    found = (
        re.match(r"chat history: schema version (\d+):", r.getMessage()) for r in caplog.records
    )
    return [int(m[1]) for m in found if m]


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    yield engine
    await engine.dispose()


@contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound, never listening, while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def _postgres_database(server: str, name: str) -> str:
    """A database of its own on the test cluster; its asyncpg URL."""
    server = server.replace("://", "+asyncpg://", 1)
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


# --------------------------------------------------------------------------------------------


def test_migrations_are_numbered_in_order() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(MIGRATIONS) + 1)), versions
    assert versions[-1] == LATEST
    assert all(m.description for m in MIGRATIONS)


async def test_a_new_database_gets_every_table_column_and_index_at_the_latest_version(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    assert await ensure_schema(sqlite_engine) == LATEST
    snapshot = await _snapshot(sqlite_engine)
    assert snapshot["tables"] == sorted([*_declared(), schema_versions.name])
    for table, names in _declared().items():
        assert [c[0] for c in snapshot["columns"][table]] == names, table
        assert snapshot["indexes"][table] == _declared_indexes()[table], table
    assert snapshot["versions"] == [(LATEST, f"created at version {LATEST}")]
    # SQLite keeps ids and JSON as TEXT (a "UUID" column would have NUMERIC affinity)
    assert dict(c[:2] for c in snapshot["columns"]["steps"])["threadId"] == "TEXT"

    # Chainlit's own data layer writes and reads its rows in these tables
    layer = HistoryDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")
    try:
        user = await layer.create_user(cl.User(identifier="alice", metadata={"a": 1}))
        assert user is not None and user.identifier == "alice"
        await layer.update_thread(THREAD_ID, name="a thread", user_id=user.id)
        await layer.upsert_feedback(Feedback(forId=ANSWER_ID, value=1, threadId=THREAD_ID))
        thread = await layer.get_thread(THREAD_ID)
        assert thread is not None and thread["name"] == "a thread", thread
        assert thread["userIdentifier"] == "alice"
        async with sqlite_engine.connect() as conn:
            stored = (await conn.execute(text('SELECT "createdAt" FROM feedbacks'))).scalar()
        assert stored, "feedbacks.createdAt has no default"
    finally:
        await layer.engine.dispose()


async def test_an_install_from_the_hand_written_ddl_is_migrated_in_order_and_keeps_its_rows(
    sqlite_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await _run(sqlite_engine, _old_ddl("sqlite") + _old_rows("'{}'"))
    before = await _snapshot(sqlite_engine)
    caplog.set_level(logging.INFO, logger="rag.history_schema")

    assert await ensure_schema(sqlite_engine) == LATEST

    after = await _snapshot(sqlite_engine)
    assert _applied(caplog) == [m.version for m in MIGRATIONS]
    assert after["versions"] == [(m.version, m.description) for m in MIGRATIONS]
    # it already had every table, column and index: only the version table is new
    assert after["rows"] == before["rows"] and len(after["rows"]["steps"]) == 2
    assert _without_versions(after["columns"]) == before["columns"]
    assert _without_versions(after["indexes"]) == before["indexes"]
    records = await read_feedback(str(sqlite_engine.url))
    assert [(r.question, r.answer, r.score, r.user) for r in records] == [
        ("Who rotates the key?", "Olga does.", "down", "alice")
    ]


async def test_an_older_chainlit_schema_gets_its_missing_tables_columns_and_indexes_in_order(
    sqlite_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [r for r in _old_rows("'{}'") if not r.startswith("INSERT INTO users")]
    rows[0] = rows[0].replace(f"'{USER_ID}'", "NULL")  # threads.userId: no user row
    await _run(sqlite_engine, _statements(OLDER_CHAINLIT_DDL) + rows)
    before = await _snapshot(sqlite_engine)
    caplog.set_level(logging.INFO, logger="rag.history_schema")

    # Stop after version 3, as a release that had only those would have: a later start
    # applies the rest, and only the rest.
    async with sqlite_engine.begin() as conn:
        assert await conn.run_sync(upgrade, MIGRATIONS[:3]) == 3
    assert _applied(caplog) == [1, 2, 3]
    caplog.clear()
    assert await ensure_schema(sqlite_engine) == LATEST
    assert _applied(caplog) == [4, 5, 6]

    after = await _snapshot(sqlite_engine)
    assert after["versions"] == [(m.version, m.description) for m in MIGRATIONS]
    for table, names in _declared().items():
        assert {c[0] for c in after["columns"][table]} == set(names), table
        assert after["indexes"][table] == _declared_indexes()[table], table
    added = [r.getMessage() for r in caplog.records if "added column" in r.getMessage()]
    assert "chat history: added column feedbacks.createdAt" in added, added
    # the rows are kept, widened by the new (empty) columns
    assert len(after["rows"]["steps"]) == len(before["rows"]["steps"]) == 2
    assert after["rows"]["feedbacks"] == [(*before["rows"]["feedbacks"][0], "None")]
    # the export reads the migrated database (the time falls back to the step's)
    (record,) = await read_feedback(str(sqlite_engine.url))
    assert (record.question, record.score, record.time) == (
        "Who rotates the key?",
        "down",
        "2026-11-30T10:00:03Z",
    )


async def test_the_export_reads_an_older_database_that_was_never_migrated(
    sqlite_engine: AsyncEngine,
) -> None:
    await _run(sqlite_engine, _statements(OLDER_CHAINLIT_DDL) + _old_rows("'{}'")[1:])
    before = await _snapshot(sqlite_engine)
    (record,) = await read_feedback(str(sqlite_engine.url))
    assert (record.question, record.answer, record.score) == (
        "Who rotates the key?",
        "Olga does.",
        "down",
    )
    assert record.sources == [{"source": "falcon.txt"}]
    assert await _snapshot(sqlite_engine) == before  # reading never migrates


async def test_migrating_twice_changes_nothing(
    sqlite_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await _run(sqlite_engine, _statements(OLDER_CHAINLIT_DDL))
    await ensure_schema(sqlite_engine)
    once = await _snapshot(sqlite_engine)
    caplog.set_level(logging.INFO, logger="rag.history_schema")
    assert await ensure_schema(sqlite_engine) == LATEST
    async with sqlite_engine.begin() as conn:  # every step again, on the finished schema
        for migration in MIGRATIONS:
            await conn.run_sync(migration.apply)
    assert await _snapshot(sqlite_engine) == once
    assert not [r for r in caplog.records if r.name == "rag.history_schema"]


@pytest.mark.parametrize("start", ["current", "older"])
async def test_a_failing_step_leaves_the_database_as_it_was(
    start: str, sqlite_engine: AsyncEngine
) -> None:
    if start == "older":  # every step of this start is undone, not only the failing one
        await _run(sqlite_engine, _statements(OLDER_CHAINLIT_DDL))
    else:
        await ensure_schema(sqlite_engine)
    before = await _snapshot(sqlite_engine)
    failing = Migration(
        LATEST + 1, "a step that fails", lambda conn: conn.exec_driver_sql("SELECT * FROM nowhere")
    )
    with pytest.raises(HistoryUnavailable, match=r"chat history database at .*: .*nowhere"):
        await ensure_schema(sqlite_engine, migrations=(*MIGRATIONS, failing))
    assert await _snapshot(sqlite_engine) == before
    assert await ensure_schema(sqlite_engine) == LATEST  # and the next start succeeds


async def test_a_database_from_a_newer_release_is_left_as_it_is(
    sqlite_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_schema(sqlite_engine)
    async with sqlite_engine.begin() as conn:
        await conn.execute(
            insert(schema_versions).values(
                version=LATEST + 1, description="from the future", applied_at="x"
            )
        )
    before = await _snapshot(sqlite_engine)
    assert await ensure_schema(sqlite_engine) == LATEST + 1
    assert await _snapshot(sqlite_engine) == before
    assert "newer than this release" in caplog.text


async def test_an_unreachable_database_is_explained_with_its_password_masked() -> None:
    with _closed_port() as port:
        url = f"postgresql+asyncpg://rag:hunter22@127.0.0.1:{port}/chat"
        engine = make_engine(url)
        try:
            with pytest.raises(HistoryUnavailable) as raised:
                await ensure_schema(engine, url)
        finally:
            await engine.dispose()
    message = str(raised.value)
    shown = f"postgresql+asyncpg://rag:********@127.0.0.1:{port}/chat"
    assert message.startswith(f"cannot use the chat history database at {shown}: "), message
    assert "hunter22" not in message


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_schema_is_created_on_both_databases_and_old_tables_are_completed(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    else:  # a database of its own: the other tests share the cluster's default one
        url = await _postgres_database(request.getfixturevalue("postgres_url"), "schema_test")
    engine, twin = make_engine(url), make_engine(url)
    try:
        async with engine.begin() as conn:  # a feedbacks table as an older setup made it
            await conn.execute(text('DROP TABLE IF EXISTS "feedbacks"'))
            await conn.execute(
                text('CREATE TABLE "feedbacks" ("id" TEXT PRIMARY KEY, "forId" TEXT, "value" INT)')
            )
        # two processes starting at once, then a restart: all idempotent
        await asyncio.gather(ensure_schema(engine), ensure_schema(twin))
        await ensure_schema(engine)
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda sync: {
                    t: {c["name"] for c in inspect(sync).get_columns(t)}
                    for t in ("users", "threads", "steps", "elements", "feedbacks")
                }
            )
    finally:
        await asyncio.gather(engine.dispose(), twin.dispose())
    assert {"comment", "threadId", "createdAt"} <= columns["feedbacks"], columns
    assert {"autoCollapse", "defaultOpen", "modes", "command"} <= columns["steps"], columns
    assert {"props", "forId", "url"} <= columns["elements"], columns


async def test_postgresql_new_older_and_repeated_starts(postgres_url: str) -> None:
    """One pass on PostgreSQL: a new database, the hand-written DDL's, both started twice."""
    fresh = make_engine(await _postgres_database(postgres_url, "fresh"))
    old = make_engine(await _postgres_database(postgres_url, "old_install"))
    try:
        assert await ensure_schema(fresh) == LATEST
        created = await _snapshot(fresh)
        columns = {t: dict(c[:2] for c in cs) for t, cs in created["columns"].items()}
        assert columns["steps"]["threadId"] == "UUID" and columns["steps"]["tags"] == "TEXT[]"
        assert columns["threads"]["metadata"] == "JSONB"
        assert columns["feedbacks"]["createdAt"] == "TIMESTAMP WITH TIME ZONE"
        assert created["versions"] == [(LATEST, f"created at version {LATEST}")]

        await _run(old, _old_ddl("postgresql") + _old_rows("'{}'::jsonb"))
        before = await _snapshot(old)
        twin = make_engine(old.url.render_as_string(hide_password=False))
        try:  # two processes starting at once on an older database
            await asyncio.gather(ensure_schema(old), ensure_schema(twin))
        finally:
            await twin.dispose()
        migrated = await _snapshot(old)
        assert migrated["versions"] == [(m.version, m.description) for m in MIGRATIONS]
        assert migrated["rows"] == before["rows"]
        assert _without_versions(migrated["columns"]) == before["columns"]
        # the same tables, columns and types as a new database
        for table in _declared():
            assert migrated["columns"][table] == created["columns"][table], table
            assert migrated["indexes"][table] == created["indexes"][table], table

        for engine, snapshot in ((fresh, created), (old, migrated)):
            await ensure_schema(engine)
            assert await _snapshot(engine) == snapshot

        (record,) = await read_feedback(old.url.render_as_string(hide_password=False))
        assert (record.question, record.score, record.user) == (
            "Who rotates the key?",
            "down",
            "alice",
        )
    finally:
        await asyncio.gather(fresh.dispose(), old.dispose())
