"""The Milvus collection: its schema, its identity, and the one place that opens it.

We create the collection ourselves (schema, index, description) before
langchain-milvus touches it, for three reasons learnt from reading
``langchain_milvus/vectorstores/milvus.py`` (0.4.0):
- it otherwise creates the collection lazily on the first insert, and concurrent
  first ``aadd_documents`` calls race ("collection already exists") and lose rows;
- it infers metadata fields from the first document, so a chunk with an extra key
  (a Markdown heading, a PDF page) would change or break the schema;
- we need to record which embedding model and dimension built the collection, so
  opening it with another one is a clear error instead of silent garbage.
After that every read and write goes through ``langchain_milvus.Milvus``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from langchain_milvus import Milvus
from pymilvus import DataType, Function, FunctionType, MilvusClient, MilvusException

from rag.errors import CollectionNotFound, EmbeddingMismatch, Service, explain
from rag.store.lite import tolerate_lite_keepalive
from rag.store.schema import (
    BM25_FUNCTION,
    MAX_VARCHAR,
    METADATA_FIELDS,
    PRIMARY_FIELD,
    SCHEMA_CHANGES,
    SCHEMA_VERSION,
    SPARSE_FIELD,
    TEXT_FIELD,
    VECTOR_FIELD,
)

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from rag.config import Settings

log = logging.getLogger(__name__)

# Read-your-writes across the sync and async clients, which are separate sessions
# on a Milvus server: the ingest record is read right after it is written.
CONSISTENCY = "Strong"
IDENTITY_PROPERTY = "rag.identity"


@dataclass(frozen=True)
class CollectionIdentity:
    """What built a collection; stored as JSON in the collection description."""

    embedding_model: str
    dimension: int
    schema_version: int = SCHEMA_VERSION
    bm25: bool = False

    def to_description(self) -> str:
        return json.dumps(
            {
                "app": "rag",
                "embedding_model": self.embedding_model,
                "dimension": self.dimension,
                "schema_version": self.schema_version,
                "bm25": self.bm25,
            }
        )

    @classmethod
    def from_description(cls, text: str) -> CollectionIdentity | None:
        try:
            data = json.loads(text)
        except (TypeError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("app") != "rag":
            return None
        return cls(
            str(data["embedding_model"]),
            int(data["dimension"]),
            int(data["schema_version"]),
            bool(data.get("bm25", False)),
        )


# pymilvus pings every 10 s; a gRPC server with gRPC's defaults, as `milvus-lite server`
# is, allows a ping without data at most every 5 minutes and sends GOAWAY
# "too_many_pings" after two strikes. Seen here: it killed a 100k-chunk ingest into a
# `milvus-lite server` ("Fail connecting to server ... Too many pings"). Pinging every
# 5.5 minutes satisfies that policy and a real Milvus' (5 s), and stays under the
# idle timeouts of common load balancers (350 s). pymilvus merges ``grpc_options``
# over its channel defaults (client/grpc_handler.py, client/async_grpc_handler.py).
SERVER_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 330_000}


def connection_args(settings: Settings) -> dict[str, Any]:
    """Arguments for MilvusClient / AsyncMilvusClient (and langchain-milvus)."""
    if settings.milvus_is_local:
        tolerate_lite_keepalive()  # before the in-process Lite server starts
        path = settings.milvus_path
        path.parent.mkdir(parents=True, exist_ok=True)
        args: dict[str, Any] = {"uri": str(path)}
    else:
        args = {"uri": settings.milvus_uri, "grpc_options": dict(SERVER_GRPC_OPTIONS)}
    if settings.milvus_token is not None and settings.milvus_token.get_secret_value():
        args["token"] = settings.milvus_token.get_secret_value()
    if settings.milvus_db:
        args["db_name"] = settings.milvus_db
    args["timeout"] = settings.milvus_timeout
    return args


def milvus_service(settings: Settings) -> Service:
    """The configured Milvus as failures name it (`rag.errors.explain`); token masked."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    return Service("milvus", f"Milvus at {settings.milvus_uri}", None, (token,))


# What a failing Milvus call raises: pymilvus' own errors (MilvusException and its
# subclasses, e.g. ConnectionConfigException for a bad URI or an unopenable Lite file) and
# a raw gRPC error from a dropped channel; connecting adds OSError, when the Lite
# database's folder cannot be made.
MILVUS_ERRORS = (MilvusException, grpc.RpcError)


def connect(settings: Settings) -> MilvusClient:
    """A sync client (blocking: call from a worker thread in async code)."""
    try:
        return MilvusClient(**connection_args(settings))
    except (*MILVUS_ERRORS, OSError) as error:
        raise explain(error, milvus_service(settings)) from error


def server_version(client: MilvusClient) -> str:
    """What answers at the URI: ``milvus_lite-3.2.2`` in-process, ``v2.3.5`` on a server."""
    try:
        return str(client.get_server_version())
    except MILVUS_ERRORS:  # an old or proxied server without the call
        return "unknown"  # assume the worst


def bm25_unavailable_reason(version: str) -> str | None:
    """Why this Milvus cannot run BM25 full-text search, or None when it can.

    BM25 functions arrived in Milvus 2.5; Milvus Lite 3.x has them (checked here on
    3.2.2), the PyPI ``milvus`` server (2.3.5) does not.
    """
    if version.startswith("milvus_lite"):
        return None
    found = re.search(r"(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) >= (2, 5):
        return None
    return f"Milvus {version} has no BM25 full-text functions (they need Milvus 2.5 or newer)"


def _create_collection(client: MilvusClient, name: str, identity: CollectionIdentity) -> None:
    schema = client.create_schema(
        auto_id=False, enable_dynamic_field=False, description=identity.to_description()
    )
    schema.add_field(PRIMARY_FIELD, DataType.VARCHAR, is_primary=True, max_length=128)
    if identity.bm25:
        schema.add_field(TEXT_FIELD, DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True)
        schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name=BM25_FUNCTION,
                function_type=FunctionType.BM25,
                input_field_names=[TEXT_FIELD],
                output_field_names=[SPARSE_FIELD],
            )
        )
    else:
        schema.add_field(TEXT_FIELD, DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=identity.dimension)
    for field, dtype in METADATA_FIELDS.items():
        if dtype == DataType.VARCHAR:
            schema.add_field(field, dtype, max_length=MAX_VARCHAR)
        else:
            schema.add_field(field, dtype)
    index = client.prepare_index_params()
    # Vectors are L2-normalised, so COSINE scores are in [-1, 1] with higher = closer,
    # which is what the relevance floor compares against.
    index.add_index(field_name=VECTOR_FIELD, index_type="AUTOINDEX", metric_type="COSINE")
    if identity.bm25:
        # Explicit, because langchain-milvus' defaults fail on Milvus Lite ("requires
        # SPARSE_INVERTED_INDEX with metric BM25"); see the project's shared notes.
        index.add_index(
            field_name=SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25"
        )
    # Milvus Lite drops the schema description, so the identity also goes into a
    # collection property, which Lite and servers both keep.
    client.create_collection(
        collection_name=name,
        schema=schema,
        index_params=index,
        consistency_level=CONSISTENCY,
        properties={IDENTITY_PROPERTY: identity.to_description()},
    )


def read_identity(client: MilvusClient, name: str) -> CollectionIdentity | None:
    """The identity a collection was created with, or None for a foreign collection."""
    info = client.describe_collection(name)
    properties = info.get("properties") or {}
    return CollectionIdentity.from_description(
        properties.get(IDENTITY_PROPERTY) or info.get("description", "")
    )


class _RaceLost(logging.Filter):
    """Drops pymilvus' own ERROR record (with a traceback) for a collection or index that
    another worker created first: ``ensure_collection`` expects that race and handles it,
    so the log should not look like a failure. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "already exist" not in record.getMessage()


# pymilvus logs each failed RPC itself, before raising it (pymilvus/decorators.py, 3.0).
_PYMILVUS_RPC_LOG = logging.getLogger("pymilvus.decorators")


def ensure_collection(
    client: MilvusClient, name: str, identity: CollectionIdentity, recreate: bool = False
) -> CollectionIdentity:
    """Create the collection if needed, or check that it was built by the same model.

    Returns the identity actually in use (whether it has BM25 is decided at creation).
    """
    if recreate and client.has_collection(name):
        client.drop_collection(name)
    if not client.has_collection(name):
        race_lost = _RaceLost()
        _PYMILVUS_RPC_LOG.addFilter(race_lost)
        try:
            _create_collection(client, name, identity)
            return identity
        except MilvusException:
            # Workers started together (`rag ingest --shard`) race to create it: one wins,
            # the others find it made and check its identity like any existing collection.
            if not client.has_collection(name):
                raise
        finally:
            _PYMILVUS_RPC_LOG.removeFilter(race_lost)
    found = read_identity(client, name)
    if found is None:
        raise EmbeddingMismatch(
            f"collection {name!r} was not created by this app; choose another with "
            "--collection / RAG_COLLECTION, or rebuild it with --recreate"
        )
    if (found.embedding_model, found.dimension) != (identity.embedding_model, identity.dimension):
        raise EmbeddingMismatch(
            f"collection {name!r} was built with {found.embedding_model} "
            f"({found.dimension} dimensions) but the configured model is "
            f"{identity.embedding_model} ({identity.dimension} dimensions); use another "
            "collection (--collection / RAG_COLLECTION) or rebuild it with --recreate"
        )
    if found.schema_version != SCHEMA_VERSION:
        why = SCHEMA_CHANGES.get(SCHEMA_VERSION, "")
        raise EmbeddingMismatch(
            f"collection {name!r} uses schema version {found.schema_version}, this app "
            f"needs {SCHEMA_VERSION}{f' ({why})' if why else ''}; rebuild it with "
            "`rag ingest FOLDER --recreate`"
        )
    return found


class RagMilvus(Milvus):
    """langchain-milvus on this app's schema, plus what the app learnt opening it.

    The dense store lists every collection field as an output, and langchain-milvus
    hides only *its own* vector fields, so the BM25 sparse vector would come back as
    metadata of every hit: it is left out here.
    """

    bm25_unavailable: str | None = None  # why BM25/hybrid search falls back to dense

    def _get_output_fields(self) -> list[str]:
        return [f for f in super()._get_output_fields() if f != SPARSE_FIELD]


def open_store(
    settings: Settings,
    embeddings: Embeddings,
    dimension: int,
    *,
    embedding_model: str,
    collection: str | None = None,
    recreate: bool = False,
) -> RagMilvus:
    """Ensure the collection and return a langchain-milvus store on it.

    Blocking (the constructor uses the sync client): call it once at start-up or
    through ``asyncio.to_thread``.
    """
    name = collection or settings.collection
    client = connect(settings)
    try:
        unsupported = bm25_unavailable_reason(server_version(client))
        identity = CollectionIdentity(embedding_model, dimension, bm25=unsupported is None)
        in_use = ensure_collection(client, name, identity, recreate=recreate)
        store = RagMilvus(
            embedding_function=embeddings,
            collection_name=name,
            connection_args=connection_args(settings),
            consistency_level=CONSISTENCY,
            primary_field=PRIMARY_FIELD,
            text_field=TEXT_FIELD,
            vector_field=VECTOR_FIELD,
            auto_id=False,
            timeout=settings.milvus_timeout,
        )
        if not in_use.bm25:
            store.bm25_unavailable = unsupported or (
                f"collection {name!r} was built without a BM25 field; rebuild it with "
                "`rag ingest FOLDER --recreate` to enable BM25 and hybrid search"
            )
        return store
    except MILVUS_ERRORS as error:
        raise explain(error, milvus_service(settings)) from error
    finally:
        client.close()


@dataclass(frozen=True)
class CollectionInfo:
    """A collection on the configured Milvus, and whether this app built it."""

    name: str
    rows: int
    identity: CollectionIdentity | None  # None: not created by this app

    def to_dict(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "name": self.name,
            "rows": self.rows,
            "embedding_model": ident.embedding_model if ident else None,
            "dimension": ident.dimension if ident else None,
            "bm25": ident.bm25 if ident else None,
            "schema_version": ident.schema_version if ident else None,
        }


def _row_count(client: MilvusClient, name: str) -> int:
    """Rows as a query sees them (deletes applied); statistics when it is not loaded."""
    try:
        rows = client.query(name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0
    except MilvusException:
        return int(client.get_collection_stats(name).get("row_count", 0))


def list_collections(settings: Settings) -> list[CollectionInfo]:
    """Blocking: every collection with its embedding model, dimension and row count."""
    client = connect(settings)
    try:
        return [
            CollectionInfo(name, _row_count(client, name), read_identity(client, name))
            for name in sorted(client.list_collections())
        ]
    except MILVUS_ERRORS as error:
        raise explain(error, milvus_service(settings)) from error
    finally:
        client.close()


def drop_collection(settings: Settings, name: str) -> int:
    """Blocking: drop a collection, returning how many rows went with it."""
    client = connect(settings)
    try:
        if not client.has_collection(name):
            raise CollectionNotFound(f"no collection named {name!r} (see `rag collections`)")
        rows = _row_count(client, name)
        client.drop_collection(name)
        return rows
    except MILVUS_ERRORS as error:
        raise explain(error, milvus_service(settings)) from error
    finally:
        client.close()
