"""The chat history tables as SQLAlchemy metadata, and the ordered migrations of older ones.

Chainlit 2.12 ships ``SQLAlchemyDataLayer`` but not its schema (its docs print PostgreSQL
DDL), and the data layer writes raw SQL against quoted camelCase columns, so the tables are
declared here in exactly that shape: UUID, JSONB and TEXT[] on PostgreSQL as Chainlit
documents them, TEXT on SQLite (a "UUID" column there would have NUMERIC affinity).

A new database is created at the latest version by ``metadata.create_all``. An older one,
made before versions were recorded (by this app's hand-written DDL, or from an older
Chainlit's documented DDL), is brought up to date by `MIGRATIONS`, in order; each version
applied is a row of `schema_versions`, so the next start runs only what is new. All of it
is one transaction that holds a database-wide lock (PostgreSQL's advisory lock, SQLite's
write lock), so two processes starting at once take turns and the second finds it done.

Importing this module does not import Chainlit (about 1.5 s), so a command that only needs
an engine or the tables stays quick.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex
from sqlalchemy.types import TypeEngine

from rag.errors import HistoryUnavailable, Service, explain

log = logging.getLogger(__name__)

SUPPORTED_DIALECTS = ("postgresql", "sqlite")

# `with_variant` keeps one Column per name and picks the type when the DDL is compiled for
# a dialect (TypeEngine.with_variant in sqlalchemy/sql/type_api.py): SQLite gets the first.
ID: TypeEngine[Any] = Text().with_variant(postgresql.UUID(as_uuid=False), "postgresql")
JSON_TEXT: TypeEngine[Any] = Text().with_variant(postgresql.JSONB(), "postgresql")
TAGS: TypeEngine[Any] = Text().with_variant(postgresql.ARRAY(Text()), "postgresql")
MOMENT: TypeEngine[Any] = Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")

metadata = MetaData()


def _references(target: str) -> ForeignKey:
    return ForeignKey(target, ondelete="CASCADE")


# Every column Chainlit 2.12 writes (UserDict, ThreadDict, StepDict, ElementDict, Feedback in
# chainlit/data/sql_alchemy.py), plus feedbacks.createdAt for the export's time.
users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("identifier", Text, nullable=False, unique=True),
    Column("metadata", JSON_TEXT, nullable=False),
    Column("createdAt", Text),
)
threads = Table(
    "threads",
    metadata,
    Column("id", ID, primary_key=True),
    Column("createdAt", Text),
    Column("name", Text),
    Column("userId", ID, _references("users.id")),
    Column("userIdentifier", Text),
    Column("tags", TAGS),
    Column("metadata", JSON_TEXT),
    Index("ix_threads_userId", "userId"),
)
steps = Table(
    "steps",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("threadId", ID, _references("threads.id"), nullable=False),
    Column("parentId", ID),
    Column("streaming", Boolean, nullable=False),
    Column("waitForAnswer", Boolean),
    Column("isError", Boolean),
    Column("metadata", JSON_TEXT),
    Column("tags", TAGS),
    Column("input", Text),
    Column("output", Text),
    Column("createdAt", Text),
    Column("command", Text),
    Column("modes", JSON_TEXT),
    Column("start", Text),
    Column("end", Text),
    Column("generation", JSON_TEXT),
    Column("showInput", Text),
    Column("language", Text),
    Column("indent", Integer),
    Column("defaultOpen", Boolean),
    Column("autoCollapse", Boolean),
    Index("ix_steps_threadId", "threadId"),
)
elements = Table(
    "elements",
    metadata,
    Column("id", ID, primary_key=True),
    Column("threadId", ID, _references("threads.id")),
    Column("type", Text),
    Column("url", Text),
    Column("chainlitKey", Text),
    Column("name", Text, nullable=False),
    Column("display", Text),
    Column("objectKey", Text),
    Column("size", Text),
    Column("page", Integer),
    Column("language", Text),
    Column("forId", ID),
    Column("mime", Text),
    Column("props", JSON_TEXT),
    Column("autoPlay", Boolean),
    Column("playerConfig", JSON_TEXT),
    Index("ix_elements_threadId", "threadId"),
)
feedbacks = Table(
    "feedbacks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("forId", ID, nullable=False),
    Column("threadId", ID),
    Column("value", Integer, nullable=False),
    Column("comment", Text),
    # func.now() compiles to now() on PostgreSQL and CURRENT_TIMESTAMP on SQLite.
    Column("createdAt", MOMENT, server_default=func.now()),
    Index("ix_feedbacks_forId", "forId"),
)
CHAT_TABLES = (users, threads, steps, elements, feedbacks)

# One row per version applied: what the database is at, and when each step ran.
schema_versions = Table(
    "rag_history_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", Text, nullable=False),
)

# Any constant: processes starting at once on one PostgreSQL serialise their DDL on it. The
# value is the one the hand-written DDL used, so an older process and a newer one take turns.
_DDL_LOCK = 7_310_042


# --- migrations -------------------------------------------------------------------------
# Ordered, never edited once released: a later change is a new version at the end. Each
# step must be safe on a database that already has what it adds, because databases made
# before versions were recorded come in several shapes (see the module docstring). Steps
# take column types from the tables above, so a declared column's type is never changed
# in place: a new type is a new migration.


@dataclass(frozen=True)
class Migration:
    """One step of the schema: its version, what it does, and the function that does it."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_missing_tables(conn: Connection) -> None:
    # create_all checks each table first (checkfirst=True) and creates a table's indexes
    # only with the table, so an existing table is left as it is.
    metadata.create_all(conn, tables=list(CHAT_TABLES))


def _add_columns(columns: Mapping[Table, str]) -> Callable[[Connection], None]:
    """ALTER TABLE … ADD COLUMN for each named column (space-separated) its table lacks.

    Added nullable and without a default: both databases allow that on a table that has
    rows, and SQLite refuses a non-constant default (CURRENT_TIMESTAMP) in ADD COLUMN. The
    type is the declared column's, compiled for the connection's dialect.
    """

    def apply(conn: Connection) -> None:
        quote = conn.dialect.identifier_preparer.quote
        for table, names in columns.items():
            present = {c["name"] for c in inspect(conn).get_columns(table.name)}
            for name in names.split():
                if name in present:
                    continue
                sql_type = table.c[name].type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(
                    f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(name)} {sql_type}"
                )
                log.info("chat history: added column %s.%s", table.name, name)

    return apply


def _create_indexes(conn: Connection) -> None:
    for table in CHAT_TABLES:
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            conn.execute(CreateIndex(index, if_not_exists=True))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the chat tables an older database lacks", _create_missing_tables),
    Migration(
        2,
        "users, threads: the columns Chainlit's data layer writes that an older table lacks",
        _add_columns(
            {
                users: "createdAt",
                threads: "createdAt name userId userIdentifier tags metadata",
            }
        ),
    ),
    Migration(
        3,
        "steps: the columns Chainlit 2 writes that a table from an older DDL lacks "
        "(command, modes, defaultOpen, autoCollapse, …)",
        _add_columns(
            {
                steps: "parentId waitForAnswer isError metadata tags input output createdAt "
                "command modes start end generation showInput language indent "
                "defaultOpen autoCollapse"
            }
        ),
    ),
    Migration(
        4,
        "elements: the columns Chainlit 2 writes that a table from an older DDL lacks "
        "(props, autoPlay, playerConfig, …)",
        _add_columns(
            {
                elements: "threadId type url chainlitKey display objectKey size page "
                "language forId mime props autoPlay playerConfig"
            }
        ),
    ),
    Migration(
        5,
        "feedbacks: threadId and comment, and createdAt (when it was given, for the export)",
        _add_columns({feedbacks: "threadId comment createdAt"}),
    ),
    Migration(
        6,
        "indexes on the columns the data layer looks rows up by",
        _create_indexes,
    ),
)
LATEST = MIGRATIONS[-1].version


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def current_version(conn: Connection) -> int | None:
    """The version recorded in the database; 0 for tables made before versions were
    recorded; None for a database with no chat tables at all."""
    present = set(inspect(conn).get_table_names())
    if schema_versions.name in present:
        return int(conn.scalar(select(func.max(schema_versions.c.version))) or 0)
    if present.isdisjoint(t.name for t in CHAT_TABLES):
        return None
    return 0


def upgrade(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the tables to the last of ``migrations``; returns the version reached.

    Runs inside the caller's transaction (see `ensure_schema` for the lock).
    """
    latest = migrations[-1].version
    version = current_version(conn)
    if version is None:  # a new database: the declared tables are the latest version
        metadata.create_all(conn)
        conn.execute(
            insert(schema_versions).values(
                version=latest, description=f"created at version {latest}", applied_at=_now()
            )
        )
        log.info("chat history: created the tables at schema version %d", latest)
        return latest
    if version > latest:
        log.warning(
            "chat history: the database is at schema version %d, newer than this release's "
            "%d; leaving it as it is",
            version,
            latest,
        )
        return version
    schema_versions.create(conn, checkfirst=True)
    for migration in migrations:
        if migration.version <= version:
            continue
        migration.apply(conn)
        conn.execute(
            insert(schema_versions).values(
                version=migration.version,
                description=migration.description,
                applied_at=_now(),
            )
        )
        log.info("chat history: schema version %d: %s", migration.version, migration.description)
        version = migration.version
    return version


@asynccontextmanager
async def _locked_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that holds a database-wide lock until it commits or rolls back."""
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            # Released by COMMIT/ROLLBACK; PostgreSQL's DDL is transactional.
            await conn.execute(select(func.pg_advisory_xact_lock(_DDL_LOCK)))
            yield conn
        return
    # Python's sqlite3 opens a transaction only before DML, so DDL would run outside one
    # and two processes could both see a column missing. With the driver in autocommit
    # (SQLAlchemy's AUTOCOMMIT sets sqlite3's isolation_level to None; see "Using
    # SQLAlchemy's Driver Level AUTOCOMMIT Feature" in sqlalchemy/dialects/sqlite/base.py)
    # our own BEGIN IMMEDIATE takes the write lock first: a second process waits for it
    # (the connection's busy timeout) and then reads the finished schema. The pool resets
    # the isolation level when the connection is returned.
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            # Connection.rollback, not a ROLLBACK statement: after a failed statement the
            # connection refuses new SQL until rolled back (PendingRollbackError), and
            # sqlite3's rollback() ends the open transaction whatever its isolation_level.
            await conn.rollback()
            raise
        await conn.exec_driver_sql("COMMIT")


def history_service(url: str) -> Service:
    """The chat history database as failures name it (password masked by `rag.errors`)."""
    return Service("history", f"the chat history database at {url}")


async def ensure_schema(
    engine: AsyncEngine, url: str | None = None, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Create or upgrade the history tables; safe at every start, from many processes.

    Returns the schema version the database is at. A step that fails rolls back every step
    of this start, so the next start begins again from the recorded version.
    """
    name = engine.dialect.name
    if name not in SUPPORTED_DIALECTS:
        raise HistoryUnavailable(f"unsupported chat history database {name!r}")
    try:
        async with _locked_transaction(engine) as conn:
            return await conn.run_sync(upgrade, migrations)
    # asyncpg's connection failures (refused, unknown host, timeout) arrive as OSError,
    # not wrapped by SQLAlchemy; everything else the drivers raise is a SQLAlchemyError.
    except (SQLAlchemyError, OSError) as error:
        raise explain(error, history_service(url or str(engine.url))) from error


def existing_columns(conn: Connection) -> dict[str, set[str]]:
    """The columns of each chat table the database has (a missing table is left out)."""
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    return {
        t.name: {c["name"] for c in inspector.get_columns(t.name)}
        for t in CHAT_TABLES
        if t.name in present
    }


def make_engine(url: str) -> AsyncEngine:
    """An engine for ``url``; SQLite waits for a writer instead of failing with "locked"."""
    return create_async_engine(url, connect_args=connect_args(url))


def connect_args(url: str) -> dict[str, Any]:
    """Driver arguments: SQLite's busy timeout, asyncpg's connect timeout (seconds)."""
    if url.startswith("sqlite"):
        return {"timeout": 30}
    return {"timeout": 5}  # a dead host fails in seconds
