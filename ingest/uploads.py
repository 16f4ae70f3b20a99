"""Files dropped into the chat: private to whoever uploaded them, kept under one folder.

A browser sends any name it likes (``../../outside/secret.txt``, NUL bytes, 300 characters),
so the stored name is rebuilt from a safe alphabet and the resolved path is checked to stay
inside the upload folder.

Several people share one deployment, so an upload is stored and searched as its owner's:
``upload_dir/<owner folder>/<content digest>-<safe name>``, ingested with that owner
(`rag.store.filters.visible_to` keeps it out of everyone else's search). The owner folder is
a hash of the owner key, so no user text reaches a path; the digest in the name means the
same name from two people, or twice with different content, are two files and two sources,
never one replacing the other, while the same file dropped twice is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.discover import SUPPORTED_SUFFIXES
from ingest.pipeline import UPLOADS_PREFIX, ingest_path
from rag.config import Settings
from rag.errors import RagError
from rag.store.schema import SHARED

if TYPE_CHECKING:
    from langchain_milvus import Milvus

MAX_NAME = 120
DIGEST_CHARS = 12  # of the content's SHA-256, at the front of the stored name
OWNER_DIR_CHARS = 16  # of the owner key's SHA-256: the owner's folder
UPLOAD_RETRY_ATTEMPTS = 2
UPLOAD_RETRY_MAX_WAIT = 1.0  # seconds
MB = 1024 * 1024  # Chainlit checks max_size_mb in these units (server.validate_file_size)


class UploadRejected(RagError):
    """An upload that is refused (type, size or name)."""


@dataclass(frozen=True)
class UploadResult:
    """What became of one dropped file, as the chat reports it."""

    name: str  # the (safe) name the user knows the file by
    source: str = ""  # where its passages are stored; "" when nothing was stored
    passages: int = 0
    problem: str | None = None  # why it was refused or failed, starting with its name
    unchanged: bool = False  # the same file was already there: nothing was written
    # The outside failure behind ``problem`` (Milvus or the embedding endpoint down), kept so
    # the HTTP API answers 503/502 as for a question; None for a refusal or a bad file.
    error: RagError | None = field(default=None, compare=False, repr=False)

    @property
    def line(self) -> str:
        if self.problem is not None:
            return f"❌ {self.problem}"
        noun = "passage" if self.passages == 1 else "passages"
        if self.unchanged:
            return f"✅ {self.name}: already added ({self.passages} {noun})"
        return f"✅ {self.name}: {self.passages} {noun} added"


def safe_name(name: str) -> str:
    """A file name with no folders, no control characters and a bounded length."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = stem[: MAX_NAME - len(suffix) - 1] or "upload"
    return f"{stem}.{suffix.lower()}" if suffix else stem


def stored_name(digest: str, name: str) -> str:
    """The stored file name of an upload: its content digest, then the name it was given."""
    return safe_name(f"{digest}-{name}")


# The source of a stored upload, from the same parts add_upload stores it by:
# uploads/<owner folder>/<content digest>-<name>.
_STORED_UPLOAD = re.compile(
    rf"^{re.escape(UPLOADS_PREFIX)}[0-9a-f]{{{OWNER_DIR_CHARS}}}/"
    rf"[0-9a-f]{{{DIGEST_CHARS}}}-(?P<name>.+)$"
)


def display_name(source: str) -> str:
    """How the chat names a source: an upload by the name it was given, marked as one.

    The stored name keeps owners and versions apart (uploads/<owner>/<digest>-<name>); the
    person who uploaded ``heron.txt`` should read "heron.txt (uploaded)", not the digests.
    """
    found = _STORED_UPLOAD.match(source)
    return f"{found['name']} (uploaded)" if found else source


def owner_folder(owner: str) -> str:
    """The folder of one owner's uploads: a hash of the key, so no user text is in a path."""
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:OWNER_DIR_CHARS]


def checked_name(name: str, temp_path: Path, max_bytes: int) -> str:
    """Blocking: the safe name of an acceptable upload; refuses a wrong type or size."""
    clean = safe_name(name)
    suffix = Path(clean).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        allowed = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise UploadRejected(f"{clean}: unsupported type {suffix or '(none)'}; use {allowed}")
    size = temp_path.stat().st_size
    if size > max_bytes:
        raise UploadRejected(
            f"{clean}: {size / MB:.1f} MB is above the {max_bytes / MB:g} MB upload limit"
        )
    return clean


def content_digest(path: Path) -> str:
    """Blocking: the first DIGEST_CHARS hex digits of the file's SHA-256."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()[:DIGEST_CHARS]


def store_upload(upload_dir: Path, name: str, temp_path: Path, max_bytes: int) -> Path:
    """Blocking: copy an uploaded temp file into ``upload_dir``; returns where it went.

    Written to a temporary file beside the target and renamed over it, so an ingest that
    reads the target (another upload of the same file) never sees half a file.
    """
    clean = checked_name(name, temp_path, max_bytes)
    root = upload_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    target = (root / clean).resolve()
    if target.parent != root:  # a symlink in the folder, or a name that resolves elsewhere
        raise UploadRejected(f"{name!r}: not a valid file name")
    handle, partial = tempfile.mkstemp(dir=root, prefix=".incoming-")
    os.close(handle)
    try:
        shutil.copyfile(temp_path, partial)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return target


# One lock per stored file while it is written and ingested: the same file dropped twice at
# once is ingested once after the other (the second finds it unchanged). Weak values: a
# lock lives while someone holds or waits for it.
_file_locks: weakref.WeakValueDictionary[Path, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock_for(path: Path) -> asyncio.Lock:
    lock = _file_locks.get(path)
    if lock is None:
        lock = _file_locks[path] = asyncio.Lock()
    return lock


async def add_upload(
    services_store: Milvus, settings: Settings, *, owner: str, name: str, temp_path: Path
) -> UploadResult:
    """Store one dropped file as ``owner``'s and ingest it; refusals and failures are
    reported in the result (one line each in the chat), not raised."""
    if owner == SHARED:
        raise ValueError("an upload needs an owner key; shared documents come from ingest")
    max_bytes = int(settings.upload_max_mb * MB)
    shown = safe_name(name)
    try:
        shown = await asyncio.to_thread(checked_name, name, temp_path, max_bytes)
        digest = await asyncio.to_thread(content_digest, temp_path)
        folder = owner_folder(owner)
        owner_dir = Path(settings.upload_dir) / folder
        as_stored = stored_name(digest, shown)
        async with _lock_for((owner_dir / as_stored).resolve()):
            stored = await asyncio.to_thread(
                store_upload, owner_dir, as_stored, temp_path, max_bytes
            )
            # Under uploads/, which folder ingests never remove; only this owner's rows
            # of this source are ever replaced or cleaned up by the run.
            report = await ingest_path(
                stored,
                services_store,
                settings,
                owner=owner,
                source_prefix=f"{UPLOADS_PREFIX}{folder}/",
                fallback_title=Path(shown).stem,
                # Someone is waiting in the chat or on the API: fail in seconds, not after a
                # folder ingest's patience (5 tries, waits up to 8 s); they can send it again.
                retry_attempts=UPLOAD_RETRY_ATTEMPTS,
                retry_max_wait=UPLOAD_RETRY_MAX_WAIT,
            )
    except UploadRejected as error:
        return UploadResult(shown, problem=str(error))
    except RagError as error:
        return UploadResult(shown, problem=f"{shown}: {error}", error=error)
    source = f"{UPLOADS_PREFIX}{folder}/{stored.name}"
    outcome = report.outcomes[0] if report.outcomes else None
    if outcome is None:
        return UploadResult(shown, source=source, passages=report.chunks_written)
    if outcome.status == "failed":
        return UploadResult(shown, problem=f"{shown}: {outcome.reason}")
    unchanged = outcome.status == "unchanged"
    return UploadResult(shown, source=outcome.source, passages=outcome.chunks, unchanged=unchanged)
