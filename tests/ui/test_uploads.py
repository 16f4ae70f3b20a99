"""Chat uploads never land outside the upload folder, whatever name the browser sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.ui.uploads import MAX_NAME, UploadRejected, safe_name, store_upload


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../outside/secret.txt", "secret.txt"),
        ("/etc/shadow.md", "shadow.md"),
        ("..\\..\\windows\\system.ini.txt", "system.ini.txt"),
        ("evil\x00.txt", "evil_.txt"),
        ("Notes (v2) – final.DOCX", "Notes _v2_ _ final.docx"),
        ("...", "upload"),
        ("", "upload"),
    ],
)
def test_safe_name_drops_folders_and_odd_characters(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_safe_name_bounds_the_length_and_keeps_the_suffix() -> None:
    name = safe_name("a" * 500 + ".pdf")
    assert len(name) <= MAX_NAME and name.endswith(".pdf")


def _temp(tmp_path: Path, size: int = 10) -> Path:
    source = tmp_path / "incoming.bin"
    source.write_bytes(b"x" * size)
    return source


@pytest.mark.parametrize("name", ["../../escape.txt", "/abs/escape.txt", "sub/dir/escape.txt"])
def test_store_upload_stays_inside_the_upload_folder(tmp_path: Path, name: str) -> None:
    uploads = tmp_path / "uploads"
    stored = store_upload(uploads, name, _temp(tmp_path), max_bytes=1000)
    assert stored.parent == uploads.resolve()
    assert stored.read_bytes() == b"x" * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incoming.bin", "uploads"]


def test_store_upload_refuses_unsupported_types(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match=r"unsupported type \.exe"):
        store_upload(tmp_path / "u", "setup.exe", _temp(tmp_path), max_bytes=1000)
    assert not (tmp_path / "u").exists()


def test_store_upload_refuses_files_over_the_limit(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match="upload limit"):
        store_upload(tmp_path / "u", "big.txt", _temp(tmp_path, 2000), max_bytes=1000)


def test_duplicate_names_replace_the_earlier_upload(tmp_path: Path) -> None:
    uploads = tmp_path / "u"
    first = store_upload(uploads, "notes.txt", _temp(tmp_path, 5), max_bytes=1000)
    second = store_upload(uploads, "notes.txt", _temp(tmp_path, 7), max_bytes=1000)
    assert first == second and second.stat().st_size == 7
    assert [p.name for p in uploads.iterdir()] == ["notes.txt"]
