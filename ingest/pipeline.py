"""The async ingestion pipeline: discover -> prepare (hash, load, split) -> write.

Stages are joined by bounded queues, so a slow stage (usually embedding) makes
the faster ones wait instead of filling memory; writes are concurrent
``aadd_documents`` calls bounded by the number of writer tasks.
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

from langchain_core.documents import Document
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from ingest import records
from ingest.discover import FoundFile, discover, is_single_file, wanted
from ingest.loaders import LoadError, load
from ingest.split import Chunk, Splitter
from rag.errors import IngestFailed, ModelUnavailable, RagError, StoreUnavailable

if TYPE_CHECKING:
    from langchain_milvus import Milvus

    from rag.settings import Settings

log = logging.getLogger(__name__)

Status = Literal["added", "updated", "unchanged", "removed", "skipped", "failed"]
PREPARERS = 2  # loading/splitting is cheap next to embedding; two overlap disk and CPU
UPLOADS_PREFIX = "uploads/"  # sources added through the chat UI
MATERIALISE_LIMIT = 1024 * 1024  # characters of chunks held before a file is streamed
MAX_RETRY_AFTER = 120.0  # a longer Retry-After is capped: the run says so rather than hang


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
class _Piece:
    """Up to batch_size consecutive chunks of one file."""

    job: _FileJob
    documents: list[Document]
    ids: list[str]


@dataclass
class _Batch:
    """Chunks of one or more files written by one aadd_documents call.

    Small files would otherwise each make a small call: with 20-chunk files and a
    remote embedding API, per-file batches tripled the number of requests.
    """

    pieces: list[_Piece] = field(default_factory=list)

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
    ) -> None:
        self.store = store
        self.settings = settings
        self.reporter = reporter or SilentReporter()
        self.include, self.exclude = include, exclude
        self.keep_missing = keep_missing
        self.source_prefix = source_prefix
        self.retry_attempts = retry_attempts
        self.retry_max_wait = retry_max_wait
        self.splitter = Splitter(settings.chunk_size, settings.chunk_overlap)
        self.report = IngestReport()
        # Sources with rows when a folder run started (read once): a file not among them
        # needs no per-file look-up, which dominated runs over thousands of new files.
        # None (single files, chat uploads): look each file up.
        self._stored_at_start: set[str] | None = None
        self._released = False  # Milvus said the collection is not loaded (server restart)
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
        # Short queues: enough to keep every writer busy, little enough that a slow
        # embedding stage holds only a few batches of text in memory (backpressure).
        pieces: asyncio.Queue[_Piece | None] = asyncio.Queue(maxsize=self.settings.concurrency)
        batches: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        for item in found:
            files.put_nowait(item)
        for _ in range(PREPARERS):
            files.put_nowait(None)
        jobs: list[_FileJob] = []
        writers = [
            asyncio.create_task(self._writer(batches)) for _ in range(self.settings.concurrency)
        ]
        batcher = asyncio.create_task(self._batcher(pieces, batches, len(writers)))
        preparers = [
            asyncio.create_task(self._preparer(files, pieces, jobs)) for _ in range(PREPARERS)
        ]
        try:
            # A writer that gives up (Milvus down past all retries) ends the run at once.
            await self._wait(preparers, [batcher, *writers])
            await pieces.put(None)
            await self._wait([batcher, *writers], [])
            await asyncio.gather(*(self._finish(job) for job in jobs))
        finally:
            await _cancel_all([*preparers, batcher, *writers])
        if not self.keep_missing and not single_file:
            await self._remove_missing({f.source for f in found})
        await asyncio.to_thread(self._flush)
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def _wait(
        self, awaited: list[asyncio.Task[None]], watched: list[asyncio.Task[None]]
    ) -> None:
        """Wait for ``awaited``, but surface any task's failure the moment it happens."""
        pending = set(awaited) | set(watched)
        while any(not p.done() for p in awaited):
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

    async def _prepare(
        self, found: FoundFile, pieces: asyncio.Queue[_Piece | None]
    ) -> _FileJob | None:
        """Decide what a file needs and queue its batches; None when nothing is to write."""
        try:
            digest = await asyncio.to_thread(records.file_hash, found.path)
        except OSError as error:
            raise LoadError(error.strerror or str(error)) from None
        stored = (
            await self._retry(records.stored_file, self.store, found.source, digest)
            if self._stored_at_start is None or found.source in self._stored_at_start
            else records.StoredFile(0, 0, None)
        )
        if stored.complete:
            self._outcome(FileOutcome(found.source, "unchanged", stored.rows))
            return None
        max_bytes = int(self.settings.max_file_mb * 1024 * 1024)
        loaded = await asyncio.to_thread(load, found.path, max_bytes)
        for note in loaded.notes:
            self.reporter.note(found.source, note)
        chunks = await asyncio.to_thread(_materialise_or_count, self.splitter, loaded)
        total = chunks if isinstance(chunks, int) else len(chunks)
        if total == 0:
            if stored.rows:
                # The file was emptied: its old chunks no longer say anything it says.
                await self._retry(
                    records.delete_where, self.store, records.source_expr(found.source)
                )
            self._outcome(
                FileOutcome(found.source, "skipped", reason="no text to index (empty file)")
            )
            return None
        if stored.current_rows:
            # Leftovers of an interrupted run of this same version: rewrite it whole.
            await self._retry(
                records.delete_where,
                self.store,
                records.version_expr(found.source, digest, same=True),
            )
        status: Status = "updated" if stored.rows > stored.current_rows else "added"
        size = await asyncio.to_thread(lambda: found.path.stat().st_size)
        job = _FileJob(found, digest, status)
        source_iter: Iterator[Chunk] = (
            iter(chunks) if isinstance(chunks, list) else self.splitter.chunks(loaded)
        )
        indexed = enumerate(source_iter)
        while True:
            piece = await asyncio.to_thread(
                lambda: list(itertools.islice(indexed, self.settings.batch_size))
            )
            if not piece:
                break
            docs = [
                self._document(found.source, loaded.title, digest, size, i, total, c)
                for i, c in piece
            ]
            ids = [records.chunk_id(found.source, digest, i) for i, _ in piece]
            job.pending += 1
            job.chunks += len(docs)
            await pieces.put(_Piece(job, docs, ids))
        job.all_queued = True
        if job.pending == 0:
            job.done.set()
        return job

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
            metadata={
                "source": source,
                "title": title[:500],
                "section": chunk.section[:1000],
                "page": chunk.page or 0,
                "chunk_index": index,
                "chunk_count": total,
                "content_hash": records.content_hash(chunk.text),
                "file_hash": digest,
                "file_size": size,
                "ingested_at": self.ingested_at,
            },
        )

    async def _batcher(
        self,
        pieces: asyncio.Queue[_Piece | None],
        batches: asyncio.Queue[_Batch | None],
        writers: int,
    ) -> None:
        """Merge pieces of several files into batches of up to batch_size chunks.

        A partial batch waits for more only while more is arriving: if nothing comes
        within a moment it is sent, so a slow loader never holds chunks back.
        """
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
            if batch.pieces and len(batch) + len(piece.ids) > self.settings.batch_size:
                await batches.put(batch)
                batch = _Batch()
            batch.pieces.append(piece)
        if batch.pieces:
            await batches.put(batch)
        for _ in range(writers):
            await batches.put(None)

    async def _writer(self, batches: asyncio.Queue[_Batch | None]) -> None:
        while (batch := await batches.get()) is not None:
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
                await records.delete_where(self.store, f"pk in {batch.ids!r}")
            await self.store.aadd_documents(batch.documents, ids=batch.ids)

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

        def announce(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if error is None:
                return
            seconds = state.next_action.sleep if state.next_action else 0.0
            self.reporter.note(
                "(retry)",
                f"{_explain(error, self.settings)}; trying again in {seconds:.1f} s "
                f"(attempt {state.attempt_number + 1} of {self.retry_attempts})",
            )

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.retry_attempts),
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
                records.version_expr(job.found.source, job.digest, same=False),
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
            await self._retry(records.delete_where, self.store, records.source_expr(source))
            self._outcome(FileOutcome(source, "removed"))

    def _flush(self) -> None:
        """Blocking: Milvus Lite searches unflushed rows by brute force, so flush at the end."""
        try:
            self.store.client.flush(self.store.collection_name)
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


def _materialise_or_count(splitter: Splitter, loaded: object) -> list[Chunk] | int:
    """Small files: the chunk list. Huge streamed files: only the count (a cheap first pass),
    because every row records the file's chunk count before the file is fully read."""
    from ingest.loaders import LoadedFile

    assert isinstance(loaded, LoadedFile)
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
    from rag.store import describe_failure

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
