"""Find the files to ingest under a folder.

Paths are reported relative to the folder, with forward slashes, because that
relative path is the document's identity in the collection: the same folder
ingested from another checkout or machine maps to the same rows.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.errors import SourceNotFound

SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".pdf", ".html", ".htm", ".docx"})

# Files that are never a document, whatever --include says: editors' and downloaders' work
# in progress (vim's "4913" probe and "x~" backup, emacs' "#x#", "x.tmp", "x.part",
# "x.crdownload"). Hidden names (vim's ".x.swp", emacs' ".#x") are skipped as hidden.
TEMPORARY_NAMES = ("4913", "*~", "#*#", "*.tmp", "*.part", "*.crdownload")


def is_skipped(name: str) -> bool:
    """Whether a file or folder name is never ingested: hidden, or an editor's temporary."""
    return name.startswith(".") or any(fnmatch.fnmatch(name, p) for p in TEMPORARY_NAMES)


@dataclass(frozen=True)
class FoundFile:
    """A file to ingest: where it is, and the name it is stored under."""

    path: Path
    source: str


def _matches(source: str, patterns: Sequence[str]) -> bool:
    name = source.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(source, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover(
    root: Path,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> tuple[Path, Iterator[FoundFile]]:
    """Return the ingest root and a lazy walk of the files under it.

    ``root`` may be one file, in which case its folder is the root. Hidden files and
    folders (``.git``, ``.venv``) and editors' temporary files are skipped; symlinked
    folders are not followed, so loops are impossible; symlinked files are followed and
    broken ones reported by the loader. With no ``include`` pattern, every supported
    suffix is taken.
    """
    root = root.expanduser()
    if not root.exists() and not root.is_symlink():
        raise SourceNotFound(f"no such file or folder: {root}")
    if root.is_file():
        base = root.resolve().parent
        single = FoundFile(root.resolve(), root.name)
        return base, iter([single] if wanted(single.source, include, exclude) else [])
    if not root.is_dir():
        raise SourceNotFound(f"not a file or folder: {root}")
    base = root.resolve()
    return base, _walk(base, include, exclude)


def is_single_file(root: Path) -> bool:
    """Blocking. A single file is ingested without removing the folder's other sources."""
    return root.expanduser().is_file()


def wanted(source: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a source path is selected by the globs (or, with none, by its suffix)."""
    if exclude and _matches(source, exclude):
        return False
    if include:
        return _matches(source, include)
    return Path(source).suffix.lower() in SUPPORTED_SUFFIXES


def _walk(base: Path, include: Sequence[str], exclude: Sequence[str]) -> Iterator[FoundFile]:
    for folder, dirs, files in os.walk(base, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_skipped(name):
                continue
            path = Path(folder, name)
            source = path.relative_to(base).as_posix()
            if wanted(source, include, exclude):
                yield FoundFile(path, source)
