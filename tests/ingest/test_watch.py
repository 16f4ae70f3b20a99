"""`rag ingest FOLDER --watch`: the collection follows the folder as files come, change and go.

The watcher runs for real (``watchfiles`` on the OS's notifications) as a task beside the
test, into Milvus Lite on a temporary file with the fake embedding server; after every step
the test waits, with a deadline, until the watched collection holds exactly what a fresh
ingest of the folder into another collection holds (every primary key with its source,
file hash and chunk content hash). One test runs the real command as a process on a Milvus
server and stops it with SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import pytest_asyncio
from pymilvus import MilvusClient

from ingest.pipeline import ingest_path
from ingest.shard import Shard
from ingest.watch import Batch, FolderWatch
from rag.services import Services, open_services
from rag.store import records
from tests.conftest import (
    RAG_BIN,
    RecordingReporter,
    cli_env,
    fake_embeddings_env,
    make_settings,
    run_rag,
    stop_process_group,
    write_files,
)
from tests.support.fake_openai import FakeServer

Rows = dict[str, tuple[str, str, str]]  # pk -> (source, file_hash, content_hash)
ROW_FIELDS = ["pk", "source", "file_hash", "content_hash"]
DEADLINE = 60.0  # seconds any one condition may take on a busy machine
QUICK = {"debounce": 0.05, "settle": 0.05}  # a short debounce and settle window keep it fast
# Chunks small enough that the files below make several each.
CHUNKING = {"chunk_size": 200, "chunk_overlap": 20, "batch_size": 8}


def text(topic: str, paragraphs: int = 3) -> str:
    body = "\n\n".join(
        f"Paragraph {i} about {topic}: the {topic} valve {i} opens at {i * 3} bar." * 2
        for i in range(paragraphs)
    )
    return f"# {topic.title()}\n\n{body}\n"


async def stored_rows(store: object) -> Rows:
    """Every row of the store's collection, by primary key."""
    found = await store.aclient.query(  # type: ignore[attr-defined]
        store.collection_name,  # type: ignore[attr-defined]
        filter='pk != ""',
        output_fields=ROW_FIELDS,
        limit=16_384,
    )
    return {r["pk"]: (r["source"], r["file_hash"], r["content_hash"]) for r in found}


def sources(rows: Rows) -> set[str]:
    return {source for source, _, _ in rows.values()}


@dataclass
class Collections:
    """The watched collection and a reference one, re-ingested from scratch on demand."""

    watched: Services
    fresh: Services

    async def expected(self, folder: Path) -> Rows:
        return await fresh_ingest(self.fresh, folder)


async def fresh_ingest(services: Services, folder: Path) -> Rows:
    """What one ingest of ``folder`` into an emptied collection writes."""
    await records.delete_where(services.store, 'pk != ""')
    await ingest_path(folder, services.store, services.settings)
    return await stored_rows(services.store)


def endpoint_settings(base_url: str) -> dict[str, str]:
    """fake_embeddings_env as settings (``RAG_EMBEDDING_PROVIDER`` -> embedding_provider)."""
    variables = fake_embeddings_env(base_url)
    return {key.removeprefix("RAG_").lower(): value for key, value in variables.items()}


@pytest_asyncio.fixture(loop_scope="function")
async def collections(tmp_path: Path, fake_openai: FakeServer) -> AsyncIterator[Collections]:
    database = str(tmp_path / "milvus.db")
    endpoint = endpoint_settings(fake_openai.base_url)
    watched = await open_services(make_settings(database, "watched", **endpoint, **CHUNKING))
    fresh = await open_services(make_settings(database, "fresh", **endpoint, **CHUNKING))
    try:
        yield Collections(watched, fresh)
    finally:
        await fresh.aclose()
        await watched.aclose()


@dataclass
class Watching:
    """A running watch: its batches as they come, and waits that fail if it died."""

    watch: FolderWatch
    task: asyncio.Task[None]
    batches: list[Batch] = field(default_factory=list)

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Poll ``check`` until it holds; fail after DEADLINE, or at once if the watch died."""
        try:
            async with asyncio.timeout(DEADLINE):
                while not await check():
                    if self.task.done():
                        self.task.result()  # its error, if it failed
                        pytest.fail(f"the watch ended while waiting for {what}")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}")

    async def matches(self, collections: Collections, folder: Path) -> Rows:
        """Wait until the watched rows are a fresh ingest's; those rows."""
        expected = await collections.expected(folder)

        async def same() -> bool:  # and the batch that wrote them has been reported
            rows = await stored_rows(collections.watched.store)
            return rows == expected and not self.watch.busy

        await self.until(same, f"the rows of a fresh ingest of {sorted(sources(expected))}")
        return expected

    async def outcome_for(self, source: str, since: int) -> list[str]:
        """Wait until a batch from index ``since`` on reports ``source``; its statuses so far."""

        async def reported() -> bool:
            return bool(self.statuses(source, since))

        await self.until(reported, f"a batch that reports {source}")
        return self.statuses(source, since)

    def writes(self, source: str, since: int = 0) -> list[str]:
        """What batches did to ``source``, leaving out the looks that found it unchanged
        (under load one save can reach the watch as two groups of events: the second
        batch re-reads the file's hash and writes nothing)."""
        return [status for status in self.statuses(source, since) if status != "unchanged"]

    def statuses(self, source: str, since: int = 0) -> list[str]:
        return [o.status for b in self.batches[since:] for o in b.report.outcomes
                if o.source == source]  # fmt: skip

    def written(self, since: int = 0) -> int:
        return sum(b.report.chunks_written for b in self.batches[since:])


@contextlib.asynccontextmanager
async def watching(services: Services, folder: Path, **options: object) -> AsyncIterator[Watching]:
    """``FolderWatch`` synced, then watching in a task; stopped (and awaited) after."""
    watch = FolderWatch(folder, services.store, services.settings, **{**QUICK, **options})  # type: ignore[arg-type]
    report = await watch.sync()
    assert report.ok, report.outcomes
    stop = asyncio.Event()
    batches: list[Batch] = []
    task = asyncio.create_task(watch.watch(stop, batches.append))
    running = Watching(watch, task, batches)
    try:
        yield running
    finally:
        stop.set()
        async with asyncio.timeout(DEADLINE):
            await task


# --- the folder, step by step ----------------------------------------------------------------


async def test_the_collection_follows_creates_changes_renames_and_deletes(
    collections: Collections, tmp_path: Path
) -> None:
    folder = write_files(
        tmp_path / "docs",
        {"a.md": text("alpha"), "notes/b.md": text("beta"), "notes/c.txt": text("gamma", 2)},
    )
    async with watching(collections.watched, folder) as watch:
        before = await watch.matches(collections, folder)

        steps: list[tuple[str, Callable[[], object]]] = [
            ("create", lambda: write_files(folder, {"new.md": text("new"),
                                                    "deep/er/d.md": text("delta")})),
            ("change", lambda: (folder / "a.md").write_text(text("alpha changed", 4))),
            ("rename a file", lambda: (folder / "notes/b.md").rename(folder / "notes/b2.md")),
            ("rename a folder", lambda: (folder / "notes").rename(folder / "notebook")),
            ("delete a file and a folder", lambda: ((folder / "new.md").unlink(),
                                                    shutil.rmtree(folder / "deep"))),
        ]  # fmt: skip
        for name, step in steps:
            step()
            after = await watch.matches(collections, folder)
            assert after != before, f"step {name!r} changed nothing to check"
            before = after

        assert sources(before) == {"a.md", "notebook/b2.md", "notebook/c.txt"}
        lines = [line for b in watch.batches if (line := b.line())]
        assert any("removed" in line and "notes/b.md" in line and "notes/b2.md" in line
                   for line in lines), lines  # fmt: skip
        assert watch.writes("a.md") == ["updated"]  # the change was one update


async def test_a_folder_moved_in_from_outside_is_ingested_and_moved_out_removed(
    collections: Collections, tmp_path: Path
) -> None:
    """Only the folder has an event when it moves: its files have none of their own."""
    folder = write_files(tmp_path / "docs", {"a.md": text("alpha")})
    outside = write_files(
        tmp_path / "outside", {"box/x.md": text("xray"), "box/y/z.md": text("zulu")}
    )
    async with watching(collections.watched, folder) as watch:
        (outside / "box").rename(folder / "box")
        rows = await watch.matches(collections, folder)
        assert sources(rows) == {"a.md", "box/x.md", "box/y/z.md"}
        # The moved-in folder is watched too: a change inside it is seen.
        (folder / "box/y/z.md").write_text(text("zulu again"))
        await watch.matches(collections, folder)
        (folder / "box").rename(outside / "box")
        rows = await watch.matches(collections, folder)
        assert sources(rows) == {"a.md"}


# --- editors ---------------------------------------------------------------------------------


def save_by_rename(path: Path, content: str) -> None:
    """What most editors do: write a temporary file beside it, then rename it onto it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(content, encoding="utf-8")
    os.replace(temporary, path)


def save_like_vim(path: Path, content: str) -> None:
    """vim with backupcopy=no: rename to the ``~`` backup, write anew, drop the backup."""
    backup = path.with_name(path.name + "~")
    path.rename(backup)
    probe = path.with_name("4913")  # vim checks it may create files in the folder
    probe.write_text("")
    probe.unlink()
    path.write_text(content, encoding="utf-8")
    backup.unlink()


async def test_a_save_by_rename_of_the_same_content_writes_nothing(
    collections: Collections, tmp_path: Path
) -> None:
    content = text("xray")
    folder = write_files(tmp_path / "docs", {"x.md": content, "y.md": text("yankee")})
    async with watching(collections.watched, folder) as watch:
        rows = await watch.matches(collections, folder)
        for save in (save_by_rename, save_like_vim):
            since = len(watch.batches)
            save(folder / "x.md", content)
            assert await watch.outcome_for("x.md", since) == ["unchanged"], save.__name__
            assert watch.written(since) == 0, save.__name__
            assert await stored_rows(collections.watched.store) == rows

        since = len(watch.batches)
        save_by_rename(folder / "x.md", text("xray, second edition"))
        rows = await watch.matches(collections, folder)
        assert watch.writes("x.md", since) == ["updated"]  # one update, no remove and add
        assert "x.md" in sources(rows)


async def test_temporary_and_hidden_files_never_become_sources(
    collections: Collections, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", {"x.md": text("xray")})
    temporary = {
        ".x.md.swp": "vim swap", ".x.md.swx": "vim swap", "4913": "", "#x.md#": "emacs autosave",
        "x.md~": "backup", "y.md.tmp": text("half"), "z.pdf.part": "%PDF-1.4",
        "w.pdf.crdownload": "%PDF-1.4", ".hidden.md": text("hidden"), ".cache/k.md": text("k"),
    }  # fmt: skip
    async with watching(collections.watched, folder) as watch:
        write_files(folder, temporary)
        os.symlink("someone@host.1234:1700000000", folder / ".#x.md")  # an emacs lock
        write_files(folder, {"real.md": text("real")})  # something that does count
        rows = await watch.matches(collections, folder)
        assert sources(rows) == {"x.md", "real.md"}
        for name in temporary:
            (folder / name).unlink()
        (folder / ".#x.md").unlink()
        since = len(watch.batches)
        write_files(folder, {"real.md": text("real, again")})
        await watch.matches(collections, folder)
        reported = {o.source for b in watch.batches for o in b.report.outcomes}
        assert reported == {"real.md"}, reported  # no temporary name, not even as removed
        assert watch.writes("real.md", since) == ["updated"]


async def test_a_file_written_in_pieces_is_ingested_only_complete(
    collections: Collections, tmp_path: Path
) -> None:
    """Each settle window sees the file grow by one more piece, so it never settles until
    the writer is done; then it is read once, whole.

    The writer appends during the window itself (the watch's ``settle_wait``), so the test
    does not depend on how fast this machine runs either side.
    """
    folder = write_files(tmp_path / "docs", {"a.md": text("alpha")})
    pieces = [text(f"piece {i}", 2) for i in range(5)]
    slow = folder / "slow.md"
    writing: list[str] = []

    async def write_a_piece_then_wait(seconds: float) -> None:
        if writing:
            with slow.open("a", encoding="utf-8") as file:
                file.write(writing.pop(0))
        await asyncio.sleep(seconds)

    async with watching(collections.watched, folder, settle_wait=write_a_piece_then_wait) as watch:
        await watch.matches(collections, folder)
        writing.extend(pieces[1:])
        slow.write_text(pieces[0], encoding="utf-8")

        async def written() -> bool:
            return not writing

        await watch.until(written, "the writer to finish")
        rows = await watch.matches(collections, folder)
        assert slow.read_text(encoding="utf-8") == "".join(pieces)
        assert "slow.md" in sources(rows)
        assert watch.writes("slow.md") == ["added"]  # once, complete: never a half version
        waited = [b for b in watch.batches if "slow.md" in b.unsettled]
        assert len(waited) >= len(pieces) - 1  # it was seen growing, and left each time


# --- failures --------------------------------------------------------------------------------


async def test_a_failed_batch_is_noted_and_tried_again(
    collections: Collections, tmp_path: Path, fake_openai: FakeServer
) -> None:
    """An outside failure the pipeline gives up on (here a refused embedding request, which
    no retry can fix) does not end the watch: one note, and the batch is tried again."""
    folder = write_files(tmp_path / "docs", {"a.md": text("alpha")})
    notes = RecordingReporter()
    async with watching(collections.watched, folder, notes=notes, retry_after=0.05) as watch:
        await watch.matches(collections, folder)
        fake_openai.fake.fail_next("embeddings", 400)
        write_files(folder, {"b.md": text("bravo")})

        async def noted() -> bool:
            return any(source == "(watch)" for source, _ in notes.notes)

        await watch.until(noted, "a note that the batch failed")
        rows = await watch.matches(collections, folder)  # the fault is used up: it went through
        assert sources(rows) == {"a.md", "b.md"}
        line = next(message for source, message in notes.notes if source == "(watch)")
        assert "trying again in" in line and "\n" not in line, line
        assert watch.writes("b.md") == ["added"]


# --- several workers -------------------------------------------------------------------------


async def test_shard_workers_each_watch_their_own_partition(
    collections: Collections, tmp_path: Path
) -> None:
    files = {f"part/f{i}.md": text(f"file {i}", 2) for i in range(8)}
    folder = write_files(tmp_path / "docs", files)
    services = collections.watched
    shards = [Shard(0, 2), Shard(1, 2)]
    async with watching(services, folder, shard=shards[0]) as first, \
            watching(services, folder, shard=shards[1]) as second:  # fmt: skip
        await first.matches(collections, folder)
        write_files(folder, {f"part/g{i}.md": text(f"new {i}", 2) for i in range(6)})
        (folder / "part/f1.md").write_text(text("file one changed"))
        (folder / "part/f2.md").unlink()
        (folder / "part/f3.md").unlink()
        await first.matches(collections, folder)
        for shard, watch in zip(shards, (first, second), strict=True):
            reported = {o.source for b in watch.batches for o in b.report.outcomes}
            assert reported and all(shard.owns(s) for s in reported), (shard, reported)


# --- the command -----------------------------------------------------------------------------


class Output:
    """A process' output lines, read in a thread so the test can wait on them."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, fragment: str, timeout: float = DEADLINE) -> str:
        for line in self.lines:
            if fragment in line:
                return line
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line with {fragment!r} in:\n" + "\n".join(self.lines))
            if line is None:
                pytest.fail(f"the output ended without {fragment!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if fragment in line:
                return line

    def rest(self) -> str:
        while (line := self._queue.get(timeout=DEADLINE)) is not None:
            self.lines.append(line)
        return "\n".join(self.lines)


def server_rows(uri: str, collection: str) -> Rows:
    client = MilvusClient(uri=uri, timeout=30, dedicated=True)
    try:
        found = client.query(collection, filter='pk != ""', output_fields=ROW_FIELDS,
                             limit=16_384)  # fmt: skip
    finally:
        client.close()
    return {r["pk"]: (r["source"], r["file_hash"], r["content_hash"]) for r in found}


def same_rows(uri: str, expected: Rows) -> bool:
    return server_rows(uri, "watched_cli") == expected


def wait_until(check: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    """Poll ``check`` (the process must stay up) until it holds, within DEADLINE."""
    event = threading.Event()
    deadline = DEADLINE
    while not check():
        assert process.poll() is None, f"the watch ended while waiting for {what}"
        if deadline <= 0:
            pytest.fail(f"timed out waiting for {what}")
        event.wait(0.1)  # a poll interval, not a wait for anything to happen
        deadline -= 0.1


@pytest.mark.server
def test_the_command_watches_until_sigint_and_exits_0(
    milvus_server: str, fake_openai: FakeServer, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", {"a.md": text("alpha"), "sub/b.md": text("beta")})
    variables = {
        "RAG_MILVUS_URI": milvus_server,
        **{f"RAG_{name.upper()}": str(value) for name, value in CHUNKING.items()},
        **fake_embeddings_env(fake_openai.base_url),
    }
    settings = make_settings(
        milvus_server, "fresh_cli", **endpoint_settings(fake_openai.base_url), **CHUNKING
    )

    def fresh() -> Rows:
        """A fresh ingest in this process (the server is shared; quicker than a process)."""

        async def ingest() -> Rows:
            async with await open_services(settings) as services:
                return await fresh_ingest(services, folder)

        return asyncio.run(ingest())

    process = subprocess.Popen(
        [str(RAG_BIN), "ingest", str(folder), "-c", "watched_cli", "--watch",
         "--debounce", "0.05", "--settle", "0.1"],
        cwd=tmp_path, env=cli_env(**variables), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output = Output(process)
        output.wait_for("watching ")
        steps: list[tuple[str, Callable[[], object]]] = [
            ("added: new.md", lambda: write_files(folder, {"new.md": text("new")})),
            ("updated: a.md", lambda: (folder / "a.md").write_text(text("alpha changed"))),
            ("removed: sub/b.md", lambda: (folder / "sub/b.md").rename(folder / "b.md")),
            ("removed: new.md", lambda: (folder / "new.md").unlink()),
        ]
        for line, step in steps:
            step()
            expected = fresh()
            wait_until(partial(same_rows, milvus_server, expected), f"the rows after {line!r}",
                       process)  # fmt: skip
            output.wait_for(line)
        assert sources(expected) == {"a.md", "b.md"}

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=DEADLINE) == 0
        text_out = output.rest()
        assert "stopped watching" in text_out, text_out
        assert "Traceback" not in text_out, text_out
    finally:
        stop_process_group(process)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("a.md", "--watch"), "not a folder"),
        ((".", "--settle", "0.5"), "are for --watch"),
        ((".", "--debounce", "0.5"), "are for --watch"),
    ],
)
def test_the_watch_options_are_refused_where_they_mean_nothing(
    tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    folder = write_files(tmp_path / "docs", {"a.md": text("alpha")})
    result = run_rag("ingest", str(folder / args[0]), *args[1:], cwd=tmp_path,
                     RAG_MILVUS_URI=str(tmp_path / "m.db"))  # fmt: skip
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "m.db").exists()  # stopped before opening anything
