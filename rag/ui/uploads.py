"""Files dropped into the chat: kept under one folder, never anywhere else.

A browser sends any name it likes (``../../outside/secret.txt``, NUL bytes, 300 characters),
so the stored name is rebuilt from a safe alphabet and the resolved path is
checked to stay inside the upload folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ingest.discover import SUPPORTED_SUFFIXES
from rag.errors import RagError

MAX_NAME = 120


class UploadRejected(RagError):
    """An upload that is refused (type, size or name)."""


def safe_name(name: str) -> str:
    """A file name with no folders, no control characters and a bounded length."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = stem[: MAX_NAME - len(suffix) - 1] or "upload"
    return f"{stem}.{suffix.lower()}" if suffix else stem


def store_upload(upload_dir: Path, name: str, temp_path: Path, max_bytes: int) -> Path:
    """Blocking: copy an uploaded temp file into the upload folder; returns where it went."""
    clean = safe_name(name)
    suffix = Path(clean).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        allowed = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise UploadRejected(f"{clean}: unsupported type {suffix or '(none)'}; use {allowed}")
    size = temp_path.stat().st_size
    if size > max_bytes:
        raise UploadRejected(
            f"{clean}: {size / 1e6:.1f} MB is above the {max_bytes / 1e6:.0f} MB upload limit"
        )
    root = upload_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    target = (root / clean).resolve()
    if target.parent != root:
        raise UploadRejected(f"{name!r}: not a valid file name")
    shutil.copyfile(temp_path, target)
    return target
