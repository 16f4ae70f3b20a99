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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymilvus import DataType, MilvusClient, MilvusException

from rag.errors import EmbeddingMismatch, StoreUnavailable

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_milvus import Milvus

    from rag.settings import Settings

PRIMARY_FIELD = "pk"
TEXT_FIELD = "text"
VECTOR_FIELD = "vector"
SCHEMA_VERSION = 1
MAX_VARCHAR = 65_535
# Every chunk row carries exactly these metadata fields, so the schema never
# depends on which document happened to be inserted first.
METADATA_FIELDS: dict[str, DataType] = {
    "source": DataType.VARCHAR,
    "title": DataType.VARCHAR,
    "section": DataType.VARCHAR,
    "page": DataType.INT64,
    "chunk_index": DataType.INT64,
    "chunk_count": DataType.INT64,
    "content_hash": DataType.VARCHAR,
    "file_hash": DataType.VARCHAR,
    "ingested_at": DataType.VARCHAR,
}
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

    def to_description(self) -> str:
        return json.dumps(
            {
                "app": "rag",
                "embedding_model": self.embedding_model,
                "dimension": self.dimension,
                "schema_version": self.schema_version,
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
            str(data["embedding_model"]), int(data["dimension"]), int(data["schema_version"])
        )


def quote(value: str) -> str:
    """A Milvus string literal for ``value``, escaped so user input can't end the literal.

    Expression templates (``filter_params``) need Milvus 2.5+, and the PyPI Milvus
    server is 2.3, so literals are escaped here instead and never concatenated raw.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def connection_args(settings: Settings) -> dict[str, Any]:
    """Arguments for MilvusClient / AsyncMilvusClient (and langchain-milvus)."""
    if settings.milvus_is_local:
        path = settings.milvus_path
        path.parent.mkdir(parents=True, exist_ok=True)
        args: dict[str, Any] = {"uri": str(path)}
    else:
        args = {"uri": settings.milvus_uri}
    if settings.milvus_token is not None and settings.milvus_token.get_secret_value():
        args["token"] = settings.milvus_token.get_secret_value()
    if settings.milvus_db:
        args["db_name"] = settings.milvus_db
    args["timeout"] = settings.milvus_timeout
    return args


def describe_failure(settings: Settings, error: BaseException) -> str:
    """One line on why Milvus failed, never including the token."""
    where = settings.milvus_uri
    message = str(getattr(error, "message", "") or error).splitlines()[0] if str(error) else ""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    if token:
        message = message.replace(token, "********")
    return f"cannot use Milvus at {where}: {message or type(error).__name__}"


def connect(settings: Settings) -> MilvusClient:
    """A sync client (blocking: call from a worker thread in async code)."""
    try:
        return MilvusClient(**connection_args(settings))
    except Exception as error:  # pymilvus raises several unrelated types here
        raise StoreUnavailable(describe_failure(settings, error)) from error


def _create_collection(client: MilvusClient, name: str, identity: CollectionIdentity) -> None:
    schema = client.create_schema(
        auto_id=False, enable_dynamic_field=False, description=identity.to_description()
    )
    schema.add_field(PRIMARY_FIELD, DataType.VARCHAR, is_primary=True, max_length=128)
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


def ensure_collection(
    client: MilvusClient, name: str, identity: CollectionIdentity, recreate: bool = False
) -> None:
    """Create the collection if needed, or check that it was built by the same model."""
    if recreate and client.has_collection(name):
        client.drop_collection(name)
    if not client.has_collection(name):
        _create_collection(client, name, identity)
        return
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
        raise EmbeddingMismatch(
            f"collection {name!r} uses schema version {found.schema_version}, this app "
            f"needs {SCHEMA_VERSION}; rebuild it with --recreate"
        )


def open_store(
    settings: Settings,
    embeddings: Embeddings,
    dimension: int,
    *,
    collection: str | None = None,
    recreate: bool = False,
) -> Milvus:
    """Ensure the collection and return a langchain-milvus store on it.

    Blocking (the constructor uses the sync client): call it once at start-up or
    through ``asyncio.to_thread``.
    """
    from langchain_milvus import Milvus

    from rag.embeddings import embedding_identity

    name = collection or settings.collection
    identity = CollectionIdentity(embedding_identity(settings)[0], dimension)
    client = connect(settings)
    try:
        ensure_collection(client, name, identity, recreate=recreate)
        return Milvus(
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
    except MilvusException as error:
        raise StoreUnavailable(describe_failure(settings, error)) from error
    finally:
        client.close()
