"""The collection's identity, listing and dropping collections, and how a Milvus failure
reads, on Milvus Lite files made for each test (no embedding model is loaded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient, MilvusException

from rag.config import Settings
from rag.errors import CollectionNotFound, EmbeddingMismatch, StoreUnavailable, explain
from rag.local.server import free_port
from rag.store.milvus import (
    CollectionIdentity,
    connect,
    drop_collection,
    ensure_collection,
    list_collections,
    milvus_service,
    read_identity,
)
from rag.store.schema import SCHEMA_CHANGES, SCHEMA_VERSION
from tests.conftest import make_settings

MODEL = CollectionIdentity("test-model", 8)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "store.db")
    yield path
    server_manager_instance.release_server(path)


@pytest.fixture
def client(db: str) -> Iterator[MilvusClient]:
    milvus = MilvusClient(uri=db)
    yield milvus
    milvus.close()


def test_a_new_collection_records_what_built_it(client: MilvusClient) -> None:
    identity = CollectionIdentity("test-model", 8, bm25=True)
    assert ensure_collection(client, "docs", identity) == identity
    assert read_identity(client, "docs") == identity
    # Opening it again with the same model keeps it and its identity.
    assert ensure_collection(client, "docs", CollectionIdentity("test-model", 8)) == identity


@pytest.mark.parametrize(
    ("model", "dimension"), [("other-model", 8), ("test-model", 16)], ids=["model", "dimension"]
)
def test_another_model_or_dimension_is_refused(
    client: MilvusClient, model: str, dimension: int
) -> None:
    ensure_collection(client, "docs", MODEL)
    with pytest.raises(EmbeddingMismatch) as refused:
        ensure_collection(client, "docs", CollectionIdentity(model, dimension))
    message = str(refused.value)
    assert "collection 'docs' was built with test-model (8 dimensions)" in message
    assert f"the configured model is {model} ({dimension} dimensions)" in message
    assert "--collection / RAG_COLLECTION" in message and "--recreate" in message


def test_recreate_replaces_a_collection_built_by_another_model(client: MilvusClient) -> None:
    ensure_collection(client, "docs", MODEL)
    other = CollectionIdentity("other-model", 16)
    assert ensure_collection(client, "docs", other, recreate=True) == other
    assert read_identity(client, "docs") == other


def test_a_foreign_collection_is_refused_and_left_alone(client: MilvusClient) -> None:
    client.create_collection("theirs", dimension=8)
    client.insert("theirs", [{"id": 1, "vector": [0.1] * 8}])
    assert read_identity(client, "theirs") is None
    with pytest.raises(EmbeddingMismatch, match="'theirs' was not created by this app"):
        ensure_collection(client, "theirs", MODEL)
    assert client.has_collection("theirs")


def test_an_old_schema_version_asks_for_a_rebuild(client: MilvusClient) -> None:
    ensure_collection(client, "docs", CollectionIdentity("test-model", 8, SCHEMA_VERSION - 1))
    with pytest.raises(EmbeddingMismatch) as refused:
        ensure_collection(client, "docs", MODEL)
    message = str(refused.value)
    assert f"uses schema version {SCHEMA_VERSION - 1}" in message
    assert f"needs {SCHEMA_VERSION} ({SCHEMA_CHANGES[SCHEMA_VERSION]})" in message
    assert "(chunks now record who may see them (private uploads))" in message
    assert "`rag ingest FOLDER --recreate`" in message


def test_list_then_drop_collections(db: str, client: MilvusClient) -> None:
    ensure_collection(client, "docs", CollectionIdentity("test-model", 8, bm25=True))
    client.insert(
        "docs",
        [
            {
                "pk": str(n),
                "text": f"row {n}",
                "vector": [1.0] * 8,
                **{"source": "a.md", "title": "", "section": "", "content_hash": ""},
                **{"page": 0, "chunk_index": n, "chunk_count": 3, "file_size": 1},
                **{"file_hash": "h", "ingested_at": "", "owner": ""},
            }
            for n in range(3)
        ],
    )
    client.create_collection("theirs", dimension=8)
    settings = make_settings(db, "docs")

    listed = {c.name: c for c in list_collections(settings)}
    assert sorted(listed) == ["docs", "theirs"]
    assert listed["docs"].rows == 3
    assert listed["docs"].to_dict() == {
        "name": "docs",
        "rows": 3,
        "embedding_model": "test-model",
        "dimension": 8,
        "bm25": True,
        "schema_version": SCHEMA_VERSION,
    }
    assert listed["theirs"].identity is None and listed["theirs"].rows == 0

    assert drop_collection(settings, "docs") == 3
    assert [c.name for c in list_collections(settings)] == ["theirs"]
    with pytest.raises(CollectionNotFound, match="no collection named 'docs'"):
        drop_collection(settings, "docs")


def _unreachable(**overrides: object) -> Settings:
    uri = str(overrides.pop("milvus_uri", f"http://127.0.0.1:{free_port()}"))
    return make_settings(uri, "docs", milvus_timeout=1.0, **overrides)


def test_an_unreachable_server_is_named_with_its_token_masked() -> None:
    settings = _unreachable(milvus_token="root:s3cret-token")
    with pytest.raises(StoreUnavailable) as failed:
        connect(settings)
    message = str(failed.value)
    assert message.startswith(f"cannot use Milvus at {settings.milvus_uri}: ")
    assert "s3cret-token" not in message
    assert isinstance(failed.value.__cause__, MilvusException)


def test_a_password_in_the_uri_is_masked() -> None:
    port = free_port()
    settings = _unreachable(milvus_uri=f"http://user:hunter2@127.0.0.1:{port}")
    with pytest.raises(StoreUnavailable) as failed:
        list_collections(settings)
    message = str(failed.value)
    assert f"cannot use Milvus at http://user:********@127.0.0.1:{port}: " in message
    assert "hunter2" not in message


def test_a_milvus_error_names_the_server_with_token_and_password_masked() -> None:
    settings = _unreachable(milvus_uri="http://user:hunter2@127.0.0.1:1", milvus_token="tok-3141")
    error = MilvusException(message="refused by tok-3141 at http://user:hunter2@127.0.0.1:1")
    explained = explain(error, milvus_service(settings))
    assert isinstance(explained, StoreUnavailable)
    assert str(explained) == (
        "cannot use Milvus at http://user:********@127.0.0.1:1: "
        "refused by ******** at http://user:********@127.0.0.1:1"
    )


def test_a_lite_folder_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    settings = make_settings(str(tmp_path / "a-file" / "milvus.db"), "docs")
    with pytest.raises(StoreUnavailable, match=r"^cannot use Milvus at .*a-file/milvus\.db: "):
        connect(settings)


class _RacedClient(MilvusClient):
    """Says the collection is missing once, as when another worker creates it between
    ``ensure_collection``'s check and its create (`rag ingest --shard`)."""

    raced = False

    def has_collection(self, collection_name: str, **kwargs: object) -> bool:
        if not self.raced:
            self.raced = True
            return False
        return super().has_collection(collection_name, **kwargs)


def test_a_lost_creation_race_opens_the_collection_without_an_error_in_the_log(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = MilvusClient(uri=db)
    ensure_collection(first, "docs", MODEL)
    raced = _RacedClient(uri=db)
    try:
        with caplog.at_level("DEBUG"):
            assert ensure_collection(raced, "docs", MODEL) == MODEL
    finally:
        raced.close()
        first.close()
    assert raced.raced
    # pymilvus logs each failed RPC with a traceback; the expected race must not show one.
    # (Milvus Lite's in-process gRPC server logs its own unrelated errors: not counted.)
    logged = [r for r in caplog.records if r.name.startswith("pymilvus") and r.levelno >= 40]
    assert not logged, caplog.text
