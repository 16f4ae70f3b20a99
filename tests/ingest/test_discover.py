"""Which files an ingest takes, and under which name (the name is the document's identity)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.discover import discover, is_single_file, wanted
from rag.errors import SourceNotFound
from tests.conftest import write_files

TREE = {
    "a.md": "a",
    "b.TXT": "b",
    "notes/c.pdf": "c",
    "notes/deep/d.html": "d",
    "image.png": "not a document",
    ".hidden.md": "hidden file",
    ".git/config.md": "inside a hidden folder",
    "notes/.cache/e.md": "inside a nested hidden folder",
}


def sources(root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    return [found.source for found in discover(root, include, exclude)[1]]


def test_every_supported_file_under_the_folder_by_its_relative_posix_path(tmp_path: Path) -> None:
    root = write_files(tmp_path / "docs", TREE)
    assert sources(root) == ["a.md", "b.TXT", "notes/c.pdf", "notes/deep/d.html"]


def test_globs_match_the_path_or_the_name_and_exclude_wins(tmp_path: Path) -> None:
    root = write_files(tmp_path / "docs", TREE)
    assert sources(root, include=("*.pdf",)) == ["notes/c.pdf"]
    assert sources(root, include=("notes/*",)) == ["notes/c.pdf", "notes/deep/d.html"]
    assert sources(root, include=("*.png",)) == ["image.png"]  # an include can widen
    assert sources(root, exclude=("notes/*",)) == ["a.md", "b.TXT"]
    assert not wanted("notes/c.pdf", ("*.pdf",), ("c.pdf",))


def test_a_single_file_is_its_own_root_and_keeps_its_name(tmp_path: Path) -> None:
    root = write_files(tmp_path / "docs", TREE)
    base, found = discover(root / "notes" / "c.pdf")
    assert base == (root / "notes").resolve() and [f.source for f in found] == ["c.pdf"]
    assert is_single_file(root / "a.md") and not is_single_file(root)


def test_symlinked_folders_are_not_followed(tmp_path: Path) -> None:
    root = write_files(tmp_path / "docs", {"a.md": "a"})
    (root / "loop").symlink_to(root, target_is_directory=True)
    assert sources(root) == ["a.md"]


def test_a_missing_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="no such file or folder"):
        discover(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "name",
    [
        "4913",
        "notes.md~",
        "#notes.md#",
        "notes.md.tmp",
        "a.part",
        "report.pdf.crdownload",
        ".notes.md.swp",
        ".#notes.md",
    ],
)
def test_temporary_files_are_never_taken_even_with_include_all(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("half a document", encoding="utf-8")
    (tmp_path / "notes.md").write_text("a document", encoding="utf-8")
    _, found = discover(tmp_path, include=["*"])
    assert [f.source for f in found] == ["notes.md"]
