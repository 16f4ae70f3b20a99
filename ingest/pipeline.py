"""The async ingestion pipeline: prepare (hash, plan, load, split) -> batch -> embed -> write.

Stages are joined by bounded queues, so a slow stage (usually embedding) makes the faster
ones wait instead of filling memory. Each stage's workers run in a task group; when the
group has finished, the stage tells every worker of the next one to stop, and any failure
ends the whole run at once (a task group cancels the rest). Embedding and writing are
separate stages with ``concurrency`` tasks and ``WRITERS`` tasks: ``aembed_documents`` on
the store's embeddings, then ``aadd_embeddings``, the two halves of langchain-milvus'
``aadd_documents``. Joined in one call, a task waiting on the embedding API could not
insert and one inserting could not embed, and the run went at about two thirds of its
slowest stage (bench/ingest_scale.py measured it). A file is done when the writes of the
batches holding its chunks have finished; what it needs is decided by ``ingest.plan``, and
every call to Milvus or the embedding API goes through ``ingest.retry``.

Every row a run writes records the run's ``owner`` (shared for a folder, one owner key for
a chat upload), and every clean-up it makes (old versions, leftovers of an interrupted
run, files gone from the folder, a retried insert's keys) is limited to that owner's rows.

A run given a ``shard`` (``ingest.shard``: one of N workers on the same folder and the same
Milvus server) prepares only the files whose names hash to it and removes only the missing
sources that do; the N runs together write exactly what one run over the folder would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.documents import Document

from ingest.discover import FoundFile, discover, is_single_file
from ingest.loaders import LoadedFile, LoadError, load
from ingest.plan import UPLOADS_PREFIX, FilePlan, Planner, Scope
from ingest.report import FileOutcome, IngestReport, Reporter, SilentReporter, Status
from ingest.retry import RATE_LIMIT_PATIENCE, Retrier, RetryPolicy, quiet_milvus_client
from ingest.shard import Shard
from ingest.split import Chunk, Splitter
from rag.store import catalog, records
from rag.store.filters import ids_expr, source_expr
from rag.store.schema import SHARED, chunk_id, chunk_metadata, file_hash

if TYPE_CHECKING:
    from langchain_milvus import Milvus

    from rag.config import Settings

__all__ = [
    "UPLOADS_PREFIX",
    "WRITERS",
    "FileOutcome",
    "IngestReport",
    "Pipeline",
    "Reporter",
    "SilentReporter",
    "Status",
    "ingest_path",
]

log = logging.getLogger(__name__)

PREPARERS = 2  # loading/splitting is cheap next to embedding; two overlap disk and CPU
# Two writers keep up with any embedding stage we measured (Milvus takes 2,000+ rows/s, as
# fast on Lite with 2 as with 8: its inserts use this process' CPU), and each holds a batch
# with its vectors in memory.
WRITERS = 2
BATCH_WAIT = 0.05  # seconds a partial batch waits for more chunks while more are arriving


@dataclass
class _FileJob:
    """A file whose chunks are in flight: done when the writes in ``writes`` are."""

    found: FoundFile
    plan: FilePlan
    chunks: int = 0
    writes: list[asyncio.Future[None]] = field(default_factory=list)  # its batches'


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
    """Up to batch_size consecutive chunks of one file; ``last`` ends the file."""

    job: _FileJob
    documents: list[Document]
    ids: list[str]
    last: bool = False

    def split(self, room: int) -> tuple[_Piece, _Piece | None]:
        """The first ``room`` chunks, and the rest (None when all fit), one write each."""
        if len(self.ids) <= room:
            return self, None
        head = _Piece(self.job, self.documents[:room], self.ids[:room])
        return head, _Piece(self.job, self.documents[room:], self.ids[room:], self.last)


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass
class _Batch:
    """Chunks of one or more files embedded in one request and written in one insert.

    Small files would otherwise each make a small call: with 20-chunk files and a
    remote embedding API, per-file batches tripled the number of requests.
    """

    pieces: list[_Piece] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # set by the embed stage
    written: asyncio.Future[None] = field(default_factory=_future)  # set by the write stage

    def add(self, piece: _Piece) -> None:
        if not piece.ids:
            return
        self.pieces.append(piece)
        writes = piece.job.writes
        if not writes or writes[-1] is not self.written:
            writes.append(self.written)

    @property
    def documents(self) -> list[Document]:
        return [d for p in self.pieces for d in p.documents]

    @property
    def ids(self) -> list[str]:
        return [i for p in self.pieces for i in p.ids]

    def __len__(self) -> int:
        return sum(len(p.ids) for p in self.pieces)


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
        owner: str = SHARED,
        source_prefix: str = "",
        shard: Shard | None = None,
        fallback_title: str | None = None,
        retry_attempts: int = 5,
        retry_max_wait: float = 8.0,
        rate_limit_patience: float = RATE_LIMIT_PATIENCE,
    ) -> None:
        self.store = store
        self.settings = settings
        self.reporter = reporter or SilentReporter()
        self.include, self.exclude = include, exclude
        self.keep_missing = keep_missing
        self.owner = owner
        # A file with no title of its own is titled by its name's stem; a chat upload is
        # stored as "<digest>-<name>", so the upload passes the name its owner gave it.
        self.fallback_title = fallback_title
        self.scope = Scope(source_prefix, include, exclude, shard)
        self._retry = Retrier(
            RetryPolicy(retry_attempts, retry_max_wait, rate_limit_patience),
            settings,
            lambda line: self.reporter.note("(retry)", line),
            # A restarted Milvus server comes back with the collection released.
            reload=lambda: store.aclient.load_collection(store.collection_name),
        )
        self.splitter = Splitter(settings.chunk_size, settings.chunk_overlap)
        self.report = IngestReport()
        self.ingested_at = datetime.now(UTC).isoformat(timespec="seconds")

    async def run(self, root: Path) -> IngestReport:
        with quiet_milvus_client():
            try:
                return await self._run(root)
            finally:
                # Rows were written or deleted, maybe also by a run that then failed: the
                # process' cached catalog of files (the chat's document list) is stale.
                catalog.invalidate(self.store)

    async def _run(self, root: Path) -> IngestReport:
        started = time.perf_counter()
        _base, walk = await asyncio.to_thread(discover, root, self.include, self.exclude)
        single_file = await asyncio.to_thread(is_single_file, root)
        folder = [
            FoundFile(f.path, self.scope.prefix + f.source)
            for f in await asyncio.to_thread(list, walk)
        ]
        found = [f for f in folder if self.scope.owns(f.source)]
        if self.scope.shard is not None:
            share = f"{len(found)} of the folder's {len(folder)} files"
            self.reporter.note("(shard)", f"shard {self.scope.shard} takes {share}")
        self.reporter.files_found(len(found))
        self.planner = await Planner.start(
            self.store, self._retry, whole_folder=not single_file, owner=self.owner
        )
        await self._stages(found)
        if not self.keep_missing and not single_file:
            # The whole folder, not this shard's part: a source is missing only when the
            # folder lacks it, and an empty folder (not an empty shard) removes nothing.
            await self._remove_missing({f.source for f in folder})
        await self._flush()
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def _stages(self, found: list[FoundFile]) -> None:
        """Run every stage to the end; the first failure of any stage stops them all.

        Short queues: enough to keep every embedder busy (preparing is ~20x faster than
        embedding), little enough that a slow embedding stage holds only a few batches of
        text in memory (backpressure; tests/ingest/test_ingest_bad_input.py measures it),
        and one embedded batch waits at most per writer slot, so slow writes hold the
        embedders back.
        """
        files = iter(found)  # shared by the preparers: each takes the next file
        pieces: asyncio.Queue[_Piece | None] = asyncio.Queue(maxsize=2)
        concurrency = self.settings.concurrency
        batches: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=concurrency)
        embedded: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=concurrency)
        try:
            async with asyncio.TaskGroup() as run:
                stages = (  # (workers, their work, the queue they feed and its readers)
                    (PREPARERS, partial(self._preparer, files, pieces), pieces, 1),
                    (1, partial(self._batcher, pieces, batches, run), batches, concurrency),
                    (concurrency, partial(self._embedder, batches, embedded), embedded, WRITERS),
                    (WRITERS, partial(self._writer, embedded), None, 0),
                )
                for workers, work, feeds, readers in stages:
                    run.create_task(_stage(workers, work, feeds, readers))
        except BaseExceptionGroup as failed:
            error = _first(failed)
            # The failure itself, as a run without stages would raise it; its cause is kept.
            raise error from error.__cause__

    def _outcome(self, outcome: FileOutcome) -> None:
        self.report.outcomes.append(outcome)
        self.reporter.file_done(outcome)

    async def _preparer(self, files: Iterator[FoundFile], pieces: asyncio.Queue[Any]) -> None:
        for found in files:
            try:
                await self._prepare(found, pieces)
            except LoadError as error:
                self._outcome(FileOutcome(found.source, "failed", reason=str(error)))

    async def _prepare(self, found: FoundFile, pieces: asyncio.Queue[Any]) -> None:
        """Plan a file and queue its chunks, the last piece marked; or report it done.

        The blocking work (hash, load, split) runs in as few thread hops as it can: under
        load each hop waits for the GIL (milvus-lite inserts run in this process), and five
        hops per file made preparing the slowest stage of the pipeline though it is 20x
        faster than embedding alone.
        """
        if self.planner.is_new(found.source):  # nothing to look up: one hop for all
            digest, read = await asyncio.to_thread(self._hash_and_read, found)
            plan = await self.planner.plan(found.source, digest)
        else:
            digest = await asyncio.to_thread(_hash, found)
            plan = await self.planner.plan(found.source, digest)
            if plan.unchanged:
                self._outcome(FileOutcome(found.source, "unchanged", plan.stored.rows))
                return
            read = await asyncio.to_thread(self._read, found)
        for note in read.loaded.notes:
            self.reporter.note(found.source, note)
        if (clear := plan.clear_first(read.total)) is not None:
            await self._retry(records.delete_where, self.store, clear)
        if read.total == 0:
            reason = "no text to index (empty file)"
            self._outcome(FileOutcome(found.source, "skipped", reason=reason))
            return
        job = _FileJob(found, plan)
        # One piece behind, so the last one is marked (a streamed file's count is only
        # known to be right once its stream ends); a file whose stream came out empty
        # still ends, with an empty piece.
        held = _Piece(job, [], [])
        async for piece in self._pieces(job, read):
            if held.ids:
                await pieces.put(held)
            held = piece
        await pieces.put(dataclasses.replace(held, last=True))

    async def _pieces(self, job: _FileJob, read: _Read) -> AsyncIterator[_Piece]:
        """The file's chunks as pieces of batch_size; a huge file's are read as they go."""
        size = self.settings.batch_size
        if isinstance(read.chunks, list):
            indexed = list(enumerate(read.chunks))
            for start in range(0, read.total, size):
                yield self._piece(job, read, indexed[start : start + size])
        else:  # a huge file, streamed: every slice is read from disk in a thread
            stream = enumerate(self.splitter.chunks(read.loaded))
            while part := await asyncio.to_thread(lambda: list(itertools.islice(stream, size))):
                yield self._piece(job, read, part)

    def _piece(self, job: _FileJob, read: _Read, part: list[tuple[int, Chunk]]) -> _Piece:
        job.chunks += len(part)
        source, digest = job.found.source, job.plan.digest
        documents = [self._document(job, read, index, chunk) for index, chunk in part]
        ids = [chunk_id(source, digest, index, self.owner) for index, _ in part]
        return _Piece(job, documents, ids)

    async def _batcher(
        self,
        pieces: asyncio.Queue[_Piece | None],
        batches: asyncio.Queue[_Batch | None],
        files: asyncio.TaskGroup,
    ) -> None:
        """Merge pieces of several files into batches of exactly batch_size chunks.

        Pieces are split to fill each batch: 1,000 chunks in 20-chunk files made 17
        batches of 60 instead of 16 of 64, a third round of requests for 8 embedders.
        A partial batch waits for more only while more is arriving: if nothing comes
        within a moment it is sent, so a slow loader never holds chunks back. Once a
        file's last piece is in a batch, every write the file waits for is known, and its
        ending (``_finish``) joins the run's tasks.
        """
        size = self.settings.batch_size
        batch = _Batch()
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that lands as the get completes, and a cancelled run hangs.
                async with asyncio.timeout(BATCH_WAIT if batch else None):
                    piece = await pieces.get()
            except TimeoutError:
                await batches.put(batch)
                batch = _Batch()
                continue
            if piece is None:
                break
            rest: _Piece | None = piece
            while rest is not None:
                head, rest = rest.split(size - len(batch))
                batch.add(head)
                if len(batch) >= size:
                    await batches.put(batch)
                    batch = _Batch()
            if piece.last:
                files.create_task(self._finish(piece.job))
        if batch:
            await batches.put(batch)

    async def _embedder(
        self, batches: asyncio.Queue[_Batch | None], embedded: asyncio.Queue[_Batch | None]
    ) -> None:
        while (batch := await batches.get()) is not None:
            batch.vectors = await self._retry(self._embed, batch.documents)
            await embedded.put(batch)

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
            self.report.chunks_written += len(batch)
            self.reporter.chunks_written(len(batch))
            batch.written.set_result(None)

    async def _write(self, batch: _Batch) -> None:
        retried = False

        async def insert() -> None:
            nonlocal retried
            if retried:
                # The failed try may have inserted rows before the error reached us;
                # Milvus does not deduplicate primary keys, so clear them first.
                await records.delete_where(self.store, ids_expr(batch.ids, self.owner))
            retried = True
            documents = batch.documents
            await self.store.aadd_embeddings(
                [d.page_content for d in documents],
                batch.vectors,
                [d.metadata for d in documents],
                ids=batch.ids,
            )

        await self._retry(insert)

    async def _finish(self, job: _FileJob) -> None:
        await asyncio.gather(*job.writes)
        # Only now is the new version complete: drop rows of any older one.
        if (replaced := job.plan.replaced) is not None:
            await self._retry(records.delete_where, self.store, replaced)
        self._outcome(FileOutcome(job.found.source, job.plan.status, job.chunks))

    async def _remove_missing(self, present: set[str]) -> None:
        """Remove the sources no longer in the folder that this run answers for (ingest.plan)."""
        if not present:
            self.reporter.note("(folder)", "no files found, so nothing was removed")
        for source in self.planner.missing(present, self.scope):
            await self._retry(records.delete_where, self.store, source_expr(source, self.owner))
            self._outcome(FileOutcome(source, "removed"))

    async def _flush(self) -> None:
        """Milvus Lite searches unflushed rows by brute force, so every run ends flushed."""
        try:
            await self.store.aclient.flush(self.store.collection_name)
        except Exception as error:  # a flush is an optimisation; never fail the ingest for it
            log.debug("flush failed: %s", error)

    def _hash_and_read(self, found: FoundFile) -> tuple[str, _Read]:
        """Blocking."""
        return _hash(found), self._read(found)

    def _read(self, found: FoundFile) -> _Read:
        """Blocking: load and split (or count the chunks of a huge file)."""
        loaded = load(found.path, int(self.settings.max_file_mb * 1024 * 1024))
        if self.fallback_title and loaded.title == found.path.stem:
            loaded.title = self.fallback_title
        chunks = self.splitter.chunks_or_count(loaded)
        try:
            size = found.path.stat().st_size
        except OSError as error:
            raise LoadError(error.strerror or str(error)) from None
        return _Read(loaded, chunks, size)

    def _document(self, job: _FileJob, read: _Read, index: int, chunk: Chunk) -> Document:
        metadata = chunk_metadata(
            source=job.found.source,
            title=read.loaded.title,
            section=chunk.section,
            page=chunk.page,
            index=index,
            total=read.total,
            text=chunk.text,
            file_hash=job.plan.digest,
            file_size=read.size,
            ingested_at=self.ingested_at,
            owner=self.owner,
        )
        return Document(page_content=chunk.text, metadata=metadata)


async def _stage(
    workers: int,
    work: Callable[[], Awaitable[None]],
    feeds: asyncio.Queue[Any] | None,
    readers: int,
) -> None:
    """Run a stage's workers to the end, then send each reader of ``feeds`` its end marker."""
    async with asyncio.TaskGroup() as stage:
        for _ in range(workers):
            stage.create_task(work())
    if feeds is not None:
        for _ in range(readers):
            await feeds.put(None)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The failure that ended the run: stage groups nest in the run's, first one first."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _hash(found: FoundFile) -> str:
    """Blocking: the file's sha256, or LoadError with a one-line reason."""
    try:
        return file_hash(found.path)
    except OSError as error:
        raise LoadError(error.strerror or str(error)) from None


async def ingest_path(
    root: Path,
    store: Milvus,
    settings: Settings,
    reporter: Reporter | None = None,
    *,
    owner: str = SHARED,
    source_prefix: str = "",
    **options: object,
) -> IngestReport:
    """Ingest a folder (or one file) into the store; the Python API behind `rag ingest`.

    ``owner``: who may see the rows (``SHARED``, the default, for everyone; a chat upload
    passes its owner key). ``source_prefix`` goes before every stored source name
    (``uploads/<owner dir>/`` for uploads), and scopes what the run may remove.
    """
    pipeline = Pipeline(
        store,
        settings,
        reporter,
        owner=owner,
        source_prefix=source_prefix,
        **options,  # type: ignore[arg-type]
    )
    return await pipeline.run(root)
