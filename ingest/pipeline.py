"""The async ingestion pipeline: discover -> prepare (hash, load, split) -> embed -> write.

Stages are joined by bounded queues, so a slow stage (usually embedding) makes
the faster ones wait instead of filling memory. Embedding and writing are separate
stages with ``concurrency`` tasks each: ``aembed_documents`` on the store's
embeddings, then ``aadd_embeddings``, the two halves of langchain-milvus'
``aadd_documents``. Joined in one call, a task waiting on the embedding API could not
insert and one inserting could not embed, and the run went at about two thirds of its
slowest stage (bench/ingest_scale.py measured it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from langchain_core.documents import Document
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from ingest.discover import FoundFile, discover, is_single_file, wanted
from ingest.loaders import LoadedFile, LoadError, load
from ingest.split import Chunk, Splitter
from rag.errors import IngestFailed, ModelUnavailable, RagError, StoreUnavailable
from rag.store import records
from rag.store.filters import ids_expr, source_expr, version_expr
from rag.store.schema import chunk_id, chunk_metadata, file_hash

if TYPE_CHECKING:
    from langchain_milvus import Milvus

    from rag.config import Settings

log = logging.getLogger(__name__)

Status = Literal["added", "updated", "unchanged", "removed", "skipped", "failed"]
PREPARERS = 2  # loading/splitting is cheap next to embedding; two overlap disk and CPU
WRITERS = 2
UPLOADS_PREFIX = "uploads/"  # sources added through the chat UI
MATERIALISE_LIMIT = 1024 * 1024  # characters of chunks held before a file is streamed
MAX_RETRY_AFTER = 120.0  # a longer Retry-After is capped: the run says so rather than hang
# A rate limit is not an outage: the API works, it only asks us to slow down, so a call
# keeps trying for this long (each wait as long as Retry-After asks) instead of a number
# of attempts. A per-minute quota needs up to a minute per window to free up.
RATE_LIMIT_PATIENCE = 900.0


@dataclass(frozen=True)
class FileOutcome:
    source: str
    status: Status
    chunks: int = 0
    reason: str = ""


@dataclass
class IngestReport:
    """What one run did; ``ok`` is False when any file failed."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    chunks_written: int = 0
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0


class Reporter(Protocol):
    """Where progress goes: a rich progress bar on a terminal, log lines elsewhere."""

    def files_found(self, total: int) -> None: ...
    def file_done(self, outcome: FileOutcome) -> None: ...
    def chunks_written(self, count: int) -> None: ...
    def note(self, source: str, message: str) -> None: ...


class SilentReporter:
    def files_found(self, total: int) -> None: ...
    def file_done(self, outcome: FileOutcome) -> None: ...
    def chunks_written(self, count: int) -> None: ...
    def note(self, source: str, message: str) -> None: ...


@dataclass
class _FileJob:
    """A file whose chunks are in flight; finished when every batch is written."""

    found: FoundFile
    digest: str
    status: Status
    pending: int = 0
    chunks: int = 0
    all_queued: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None


@dataclass(frozen=True)
class _Read:
    """A file loaded and split: its chunks, or only their count for a huge streamed file."""

    loaded: LoadedFile
    chunks: list[Chunk] | int
    size: int

    @property
    def total(self) -> int:
        return self.chunks if isinstance(self.chunks, int) else len(self.chunks)


@dataclass(frozen=True)
class _Piece:
    """Up to batch_size consecutive chunks of one file."""

    job: _FileJob
    documents: list[Document]
    ids: list[str]

    def split(self, room: int) -> tuple[_Piece, _Piece | None]:
        """The first ``room`` chunks, and the rest (None when all fit), one write each."""
        if len(self.ids) <= room:
            return self, None
        self.job.pending += 1  # the rest is one more write before the file is complete
        return (
            _Piece(self.job, self.documents[:room], self.ids[:room]),
            _Piece(self.job, self.documents[room:], self.ids[room:]),
        )


@dataclass
class _Batch:
    """Chunks of one or more files embedded in one request and written in one insert.

    Small files would otherwise each make a small call: with 20-chunk files and a
    remote embedding API, per-file batches tripled the number of requests.
    """

    pieces: list[_Piece] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # set by the embed stage

    @property
    def documents(self) -> list[Document]:
        return [d for p in self.pieces for d in p.documents]

    @property
    def ids(self) -> list[str]:
        return [i for p in self.pieces for i in p.ids]

    def __len__(self) -> int:
        return sum(len(p.ids) for p in self.pieces)


def _permanent(error: BaseException) -> bool:
    """Errors no retry can fix: bad credentials, bad requests, our own checks.

    A timeout of the embedding endpoint counts too: its client already retried it
    (``rag.embeddings.EMBEDDING_RETRIES``), and retrying every timed-out try again here
    would multiply the worst case (attempts x timeout) instead of bounding it.
    """
    if isinstance(error, (RagError, ValueError, TypeError, KeyError, AssertionError)):
        return True
    if type(error).__module__.startswith("openai") and "Timeout" in type(error).__name__:
        return True
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


class Pipeline:
    """One ingest run over one folder into one store."""

    def __init__(
        self,
        store: Milvus,
        settings: Settings,
        reporter: Reporter | None = None,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        keep_missing: bool = False,
        source_prefix: str = "",
        retry_attempts: int = 5,
        retry_max_wait: float = 8.0,
        rate_limit_patience: float = RATE_LIMIT_PATIENCE,
    ) -> None:
        self.store = store
        self.settings = settings
        self.reporter = reporter or SilentReporter()
        self.include, self.exclude = include, exclude
        self.keep_missing = keep_missing
        self.source_prefix = source_prefix
        self.retry_attempts = retry_attempts
        self.retry_max_wait = retry_max_wait
        self.rate_limit_patience = rate_limit_patience
        self.splitter = Splitter(settings.chunk_size, settings.chunk_overlap)
        self.report = IngestReport()
        # Sources with rows when a folder run started (read once): a file not among them
        # needs no per-file look-up, which dominated runs over thousands of new files.
        # None (single files, chat uploads): look each file up.
        self._stored_at_start: set[str] | None = None
        self._released = False  # Milvus said the collection is not loaded (server restart)
        self._preparers_left = self._embedders_left = 0  # stage tasks still running
        self.ingested_at = datetime.now(UTC).isoformat(timespec="seconds")

    async def run(self, root: Path) -> IngestReport:
        with _quiet_milvus_client():
            return await self._run(root)

    async def _run(self, root: Path) -> IngestReport:
        started = time.perf_counter()
        _base, walk = await asyncio.to_thread(discover, root, self.include, self.exclude)
        single_file = await asyncio.to_thread(is_single_file, root)
        found = [
            FoundFile(f.path, self.source_prefix + f.source)
            for f in await asyncio.to_thread(list, walk)
        ]
        self.reporter.files_found(len(found))
        if not single_file:
            self._stored_at_start = await self._retry(records.stored_sources, self.store)
        files: asyncio.Queue[FoundFile | None] = asyncio.Queue()
        # Short queues: enough to keep every embedder busy (preparing is ~20x faster than
        # embedding), little enough that a slow embedding stage holds only a few batches
        # of text in memory (backpressure; tests/ingest/test_ingest_bad_input.py measures it).
        pieces: asyncio.Queue[_Piece | None] = asyncio.Queue(maxsize=2)
        batches: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=self.settings.concurrency)
        for item in found:
            files.put_nowait(item)
        for _ in range(PREPARERS):
            files.put_nowait(None)
        concurrency = self.settings.concurrency
        # One embedded batch waits at most: writers slower than embedding hold the
        # embedders back. Two writers keep up with any embedding stage we measured
        # (Milvus takes 2,000+ rows/s, as fast on Lite with 2 as with 8: its inserts use
        # this process' CPU) and each holds a batch with its vectors in memory.
        embedded: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=concurrency)
        jobs: list[_FileJob] = []
        self._preparers_left, self._embedders_left = PREPARERS, concurrency
        writers = [asyncio.create_task(self._writer(embedded)) for _ in range(WRITERS)]
        embedders = [
            asyncio.create_task(self._embedder(batches, embedded, len(writers)))
            for _ in range(concurrency)
        ]
        batcher = asyncio.create_task(self._batcher(pieces, batches, len(embedders)))
        preparers = [
            asyncio.create_task(self._preparer(files, pieces, jobs)) for _ in range(PREPARERS)
        ]
        stages = [*preparers, batcher, *embedders, *writers]
        try:
            # A stage that gives up (Milvus or the embedding API down past all retries)
            # ends the run at once: every stage is watched until the last one ends.
            await self._wait(stages)
            await asyncio.gather(*(self._finish(job) for job in jobs))
        finally:
            await _cancel_all(stages)
        if not self.keep_missing and not single_file:
            await self._remove_missing({f.source for f in found})
        await self._flush()
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def _wait(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for every task, but surface any task's failure the moment it happens."""
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    def _outcome(self, outcome: FileOutcome) -> None:
        self.report.outcomes.append(outcome)
        self.reporter.file_done(outcome)

    async def _preparer(
        self,
        files: asyncio.Queue[FoundFile | None],
        pieces: asyncio.Queue[_Piece | None],
        jobs: list[_FileJob],
    ) -> None:
        while (found := await files.get()) is not None:
            try:
                job = await self._prepare(found, pieces)
            except LoadError as error:
                self._outcome(FileOutcome(found.source, "failed", reason=str(error)))
                continue
            if job is not None:
                jobs.append(job)
        self._preparers_left -= 1
        if self._preparers_left == 0:  # the last one out tells the batcher to finish
            await pieces.put(None)

    async def _prepare(
        self, found: FoundFile, pieces: asyncio.Queue[_Piece | None]
    ) -> _FileJob | None:
        """Decide what a file needs and queue its batches; None when nothing is to write.

        The blocking work (hash, load, split) runs in as few thread hops as it can: under
        load each hop waits for the GIL (milvus-lite inserts run in this process), and five
        hops per file made preparing the slowest stage of the pipeline though it is 20x
        faster than embedding alone.
        """
        if self._stored_at_start is not None and found.source not in self._stored_at_start:
            # A file the collection has never seen: nothing to look up, one hop for all.
            digest, read = await asyncio.to_thread(self._hash_and_read, found)
            stored = records.StoredFile(0, 0, None)
        else:
            digest = await asyncio.to_thread(_hash, found)
            stored = await self._retry(records.stored_file, self.store, found.source, digest)
            if stored.complete:
                self._outcome(FileOutcome(found.source, "unchanged", stored.rows))
                return None
            read = await asyncio.to_thread(self._read, found)
        for note in read.loaded.notes:
            self.reporter.note(found.source, note)
        total = read.total
        if total == 0:
            if stored.rows:
                # The file was emptied: its old chunks no longer say anything it says.
                await self._retry(records.delete_where, self.store, source_expr(found.source))
            self._outcome(
                FileOutcome(found.source, "skipped", reason="no text to index (empty file)")
            )
            return None
        if stored.current_rows:
            # Leftovers of an interrupted run of this same version: rewrite it whole.
            await self._retry(
                records.delete_where,
                self.store,
                version_expr(found.source, digest, same=True),
            )
        status: Status = "updated" if stored.rows > stored.current_rows else "added"
        job = _FileJob(found, digest, status)
        size = self.settings.batch_size
        if isinstance(read.chunks, list):
            indexed = list(enumerate(read.chunks))
            slices = (indexed[i : i + size] for i in range(0, total, size))
        else:  # a huge file, streamed: every slice is read from disk in a thread
            stream = enumerate(self.splitter.chunks(read.loaded))
            slices = None
        while True:
            if slices is not None:
                piece = next(slices, [])
            else:
                piece = await asyncio.to_thread(lambda: list(itertools.islice(stream, size)))
            if not piece:
                break
            docs = [
                self._document(found.source, read.loaded.title, digest, read.size, i, total, c)
                for i, c in piece
            ]
            ids = [chunk_id(found.source, digest, i) for i, _ in piece]
            job.pending += 1
            job.chunks += len(docs)
            await pieces.put(_Piece(job, docs, ids))
        job.all_queued = True
        if job.pending == 0:
            job.done.set()
        return job

    def _hash_and_read(self, found: FoundFile) -> tuple[str, _Read]:
        """Blocking."""
        return _hash(found), self._read(found)

    def _read(self, found: FoundFile) -> _Read:
        """Blocking: load and split (or count the chunks of a huge file)."""
        max_bytes = int(self.settings.max_file_mb * 1024 * 1024)
        loaded = load(found.path, max_bytes)
        chunks = _materialise_or_count(self.splitter, loaded)
        try:
            size = found.path.stat().st_size
        except OSError as error:
            raise LoadError(error.strerror or str(error)) from None
        return _Read(loaded, chunks, size)

    def _document(
        self,
        source: str,
        title: str,
        digest: str,
        size: int,
        index: int,
        total: int,
        chunk: Chunk,
    ) -> Document:
        return Document(
            page_content=chunk.text,
            metadata=chunk_metadata(
                source=source,
                title=title,
                section=chunk.section,
                page=chunk.page,
                index=index,
                total=total,
                text=chunk.text,
                file_hash=digest,
                file_size=size,
                ingested_at=self.ingested_at,
            ),
        )

    async def _batcher(
        self,
        pieces: asyncio.Queue[_Piece | None],
        batches: asyncio.Queue[_Batch | None],
        embedders: int,
    ) -> None:
        """Merge pieces of several files into batches of exactly batch_size chunks.

        Pieces are split to fill each batch: 1,000 chunks in 20-chunk files made 17
        batches of 60 instead of 16 of 64, a third round of requests for 8 embedders.
        A partial batch waits for more only while more is arriving: if nothing comes
        within a moment it is sent, so a slow loader never holds chunks back.
        """
        size = self.settings.batch_size
        batch = _Batch()
        while True:
            try:
                timeout = 0.05 if batch.pieces else None
                piece = await asyncio.wait_for(pieces.get(), timeout)
            except TimeoutError:
                await batches.put(batch)
                batch = _Batch()
                continue
            if piece is None:
                break
            rest: _Piece | None = piece
            while rest is not None:
                head, rest = rest.split(size - len(batch))
                batch.pieces.append(head)
                if len(batch) >= size:
                    await batches.put(batch)
                    batch = _Batch()
        if batch.pieces:
            await batches.put(batch)
        for _ in range(embedders):
            await batches.put(None)

    async def _embedder(
        self,
        batches: asyncio.Queue[_Batch | None],
        embedded: asyncio.Queue[_Batch | None],
        writers: int,
    ) -> None:
        while (batch := await batches.get()) is not None:
            batch.vectors = await self._retry(self._embed, batch.documents)
            await embedded.put(batch)
        self._embedders_left -= 1
        if self._embedders_left == 0:  # the last one out tells every writer to stop
            for _ in range(writers):
                await embedded.put(None)

    async def _embed(self, documents: list[Document]) -> list[np.ndarray]:
        embeddings = self.store.embeddings
        assert embeddings is not None and not isinstance(embeddings, list)
        vectors = await embeddings.aembed_documents([d.page_content for d in documents])
        # float32 rows take an eighth of the memory of lists of Python floats while the
        # batch waits for a writer, and pymilvus packs them as they are.
        return list(np.asarray(vectors, dtype=np.float32))

    async def _writer(self, embedded: asyncio.Queue[_Batch | None]) -> None:
        while (batch := await embedded.get()) is not None:
            await self._write(batch)
            count = len(batch)
            self.report.chunks_written += count
            self.reporter.chunks_written(count)
            for piece in batch.pieces:
                piece.job.pending -= 1
                if piece.job.all_queued and piece.job.pending == 0:
                    piece.job.done.set()

    async def _write(self, batch: _Batch) -> None:
        attempt = 0

        async def insert() -> None:
            nonlocal attempt
            attempt += 1
            if attempt > 1:
                # The failed try may have inserted rows before the error reached us;
                # Milvus does not deduplicate primary keys, so clear them first.
                await records.delete_where(self.store, ids_expr(batch.ids))
            documents = batch.documents
            await self.store.aadd_embeddings(
                [d.page_content for d in documents],
                batch.vectors,
                [d.metadata for d in documents],
                ids=batch.ids,
            )

        await self._retry(insert)

    async def _retry(self, func, *args):  # type: ignore[no-untyped-def]
        """Run ``func`` with exponential back-off on transient errors, then fail in one line.

        A wait is never shorter than the Retry-After the server asked for, and each wait
        is announced in one line, so an outage shows as a few notes and not as silence.
        """
        backoff = wait_exponential(multiplier=0.5, max=self.retry_max_wait) + wait_random(0, 0.5)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            asked = _retry_after(error) if error is not None else None
            return max(backoff(state), min(asked, MAX_RETRY_AFTER) if asked else 0.0)

        def stop(state: RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            if _rate_limited(error):
                return state.seconds_since_start >= self.rate_limit_patience
            return state.attempt_number >= self.retry_attempts

        def announce(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if error is None:
                return
            seconds = state.next_action.sleep if state.next_action else 0.0
            if _rate_limited(error):
                left = max(0.0, self.rate_limit_patience - (state.seconds_since_start or 0.0))
                then = f"waiting {seconds:.1f} s (rate limits are retried for {left:.0f} s more)"
            else:
                then = (
                    f"trying again in {seconds:.1f} s "
                    f"(attempt {state.attempt_number + 1} of {self.retry_attempts})"
                )
            self.reporter.note("(retry)", f"{_explain(error, self.settings)}; {then}")

        try:
            async for attempt in AsyncRetrying(
                stop=stop,
                wait=wait,
                retry=retry_if_exception(lambda e: not _permanent(e)),
                before_sleep=announce,
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1 and self._released:
                        # A restarted Milvus server comes back with the collection released.
                        await self.store.aclient.load_collection(self.store.collection_name)
                        self._released = False
                    try:
                        return await func(*args)
                    except Exception as error:
                        self._released = self._released or _released(error)
                        raise
        except RagError:
            raise
        except Exception as error:
            raise _explain(error, self.settings) from error
        raise AssertionError("unreachable")

    async def _finish(self, job: _FileJob) -> None:
        await job.done.wait()
        # Only now is the new version complete: drop rows of any older one.
        if job.status == "updated":
            await self._retry(
                records.delete_where,
                self.store,
                version_expr(job.found.source, job.digest, same=False),
            )
        self._outcome(FileOutcome(job.found.source, job.status, job.chunks))

    async def _remove_missing(self, present: set[str]) -> None:
        """Remove sources no longer in the folder, within this run's scope only.

        Scope: sources under this run's prefix that the include/exclude globs select
        (``--include "*.pdf"`` must not remove the Markdown files), never files added
        through the chat (under ``uploads/``) from a folder run, and nothing at all
        when the folder turned out empty, which is more often a wrong path than intent.
        """
        if not present:
            self.reporter.note("(folder)", "no files found, so nothing was removed")
            return
        # Every source written by this run is in `present`, so the start-of-run list is
        # all that can be missing.
        prefix = self.source_prefix
        for source in sorted((self._stored_at_start or set()) - present):
            if not source.startswith(prefix) or (not prefix and source.startswith(UPLOADS_PREFIX)):
                continue
            if not wanted(source[len(prefix) :], self.include, self.exclude):
                continue
            await self._retry(records.delete_where, self.store, source_expr(source))
            self._outcome(FileOutcome(source, "removed"))

    async def _flush(self) -> None:
        """Milvus Lite searches unflushed rows by brute force, so every run ends flushed."""
        try:
            await self.store.aclient.flush(self.store.collection_name)
        except Exception as error:  # a flush is an optimisation; never fail the ingest for it
            log.debug("flush failed: %s", error)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the stage tasks and wait until every one has ended.

    One ``cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for`` (the
    batcher's) can swallow a cancellation that lands as its inner get completes, and the
    batcher then blocks forever putting into a queue no writer reads. So cancel again
    until all are done; a failed run must end, not hang.
    """
    pending = [t for t in tasks if not t.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
        pending = [t for t in pending if not t.done()]
    for task in tasks:  # retrieve exceptions so none is reported as never retrieved
        if not task.cancelled():
            task.exception()


@contextlib.contextmanager
def _quiet_milvus_client() -> Iterator[None]:
    """Silence pymilvus' own per-attempt tracebacks while the pipeline retries.

    pymilvus logs every failed call with a full traceback through its own handler; the
    pipeline already reports each retry and the final failure in one line, so an
    outage would otherwise bury those lines under hundreds of traceback lines.
    Debug logging (``rag -v``) keeps them.
    """
    global _quieted, _saved_level
    logger = logging.getLogger("pymilvus")
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    if _quieted == 0:  # runs may overlap (chat uploads): the first saves, the last restores
        _saved_level = logger.level
        logger.setLevel(logging.CRITICAL)
    _quieted += 1
    try:
        yield
    finally:
        _quieted -= 1
        if _quieted == 0:
            logger.setLevel(_saved_level)


_quieted = 0
_saved_level = logging.NOTSET


def _hash(found: FoundFile) -> str:
    """Blocking: the file's sha256, or LoadError with a one-line reason."""
    try:
        return file_hash(found.path)
    except OSError as error:
        raise LoadError(error.strerror or str(error)) from None


def _materialise_or_count(splitter: Splitter, loaded: LoadedFile) -> list[Chunk] | int:
    """Small files: the chunk list. Huge streamed files: only the count (a cheap first pass),
    because every row records the file's chunk count before the file is fully read."""
    stream = splitter.chunks(loaded)
    first: list[Chunk] = []
    held = 0
    for chunk in stream:
        first.append(chunk)
        held += len(chunk.text)
        # Bounded by characters, not chunks: 5000 chunks of 4000 characters would keep
        # 20 MB of a streamed file in memory, on top of the batches in flight.
        if held > MATERIALISE_LIMIT:
            counted = len(first)
            first.clear()
            return counted + sum(1 for _ in stream)
    return first


def _rate_limited(error: BaseException | None) -> bool:
    return getattr(error, "status_code", None) == 429


def _released(error: BaseException) -> bool:
    """Milvus refused a query because the collection is not loaded (as after a restart)."""
    text = str(error).lower()
    return "released" in text or "not loaded" in text


def _retry_after(error: BaseException) -> float | None:
    """Seconds a rate-limited (429) or unavailable (503) server asked us to wait, if it did."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def _explain(error: BaseException, settings: Settings) -> RagError:
    """One line for an error that survived every retry, naming the service at fault."""
    from rag.embeddings import EMBEDDING_RETRIES, EMBEDDING_TIMEOUT
    from rag.store.milvus import describe_failure

    module = type(error).__module__
    if module.startswith(("openai", "httpx")):
        status = getattr(error, "status_code", None)
        where = settings.embedding_base_url or "the OpenAI API"
        if status == 401:
            return ModelUnavailable(
                f"embedding endpoint {where} rejected the API key (401); "
                "check RAG_EMBEDDING_API_KEY"
            )
        if "Timeout" in type(error).__name__:
            return ModelUnavailable(
                f"embedding endpoint {where} did not answer within {EMBEDDING_TIMEOUT:g} s "
                f"({EMBEDDING_RETRIES + 1} tries)"
            )
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        # A proxy may echo the key it was sent in its error text.
        key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else ""
        if key:
            first = first.replace(key, "********")
        return ModelUnavailable(f"embedding endpoint {where} failed: {first}")
    if module.startswith(("pymilvus", "grpc")) or isinstance(
        error, (ConnectionError, TimeoutError)
    ):
        details = getattr(error, "details", None)
        if callable(details) and callable(getattr(error, "code", None)):
            # A raw gRPC error's first line is "<AioRpcError of RPC that terminated with:".
            error = ConnectionError(f"{error.code().name}: {details()}")  # type: ignore[attr-defined]
        return StoreUnavailable(describe_failure(settings, error))
    return IngestFailed(f"ingest stopped: {type(error).__name__}: {error}")


async def ingest_path(
    root: Path,
    store: Milvus,
    settings: Settings,
    reporter: Reporter | None = None,
    **options: object,
) -> IngestReport:
    """Ingest a folder (or one file) into the store; the Python API behind `rag ingest`."""
    return await Pipeline(store, settings, reporter, **options).run(root)  # type: ignore[arg-type]
