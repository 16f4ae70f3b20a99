"""Bad input: each case is reported per file, the good files still go in, ok only if none failed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from ingest.loaders import STREAM_THRESHOLD
from ingest.pipeline import IngestReport, ingest_path
from rag.embeddings import LOCAL_MODEL_NAME as MODEL
from rag.errors import SourceNotFound
from rag.store.milvus import open_store
from tests.conftest import (
    IngestEnv,
    OpenEnv,
    RecordingReporter,
    by_source,
    make_settings,
    run_rag,
    write_files,
)
from tests.ingest.test_loaders import lie_about_document_size, write_docx_bomb

GOOD = {"good.md": "# Good\n\nThe DockPost DP-7 anchor nuts are tightened to 40 Nm.\n"}
SMALL = {"chunk_size": 300, "chunk_overlap": 30}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + bytes(64)


async def ingest_with(
    open_env: OpenEnv, folder: Path, **overrides: object
) -> tuple[IngestEnv, IngestReport, RecordingReporter]:
    env = await open_env(**{**SMALL, **overrides})
    reporter = RecordingReporter()
    report = await env.ingest(folder, reporter)
    return env, report, reporter


async def assert_good_file_went_in(env: IngestEnv, report: IngestReport) -> None:
    assert by_source(report)["good.md"].status == "added"
    assert await env.count('source == "good.md"') == 1


def pdf_bytes(content_stream: bytes, stream_dict: bytes = b"") -> bytes:
    """A minimal one-page PDF with a correct xref table, built by hand."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< "
        + stream_dict
        + b" /Length "
        + str(len(content_stream)).encode()
        + b" >>\nstream\n"
        + content_stream
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


HELLO_PDF_TEXT = b"BT /F1 12 Tf 72 720 Td (Hello from a hand-made PDF) Tj ET"


def test_hand_made_pdf_is_valid(tmp_path: Path) -> None:
    """The generator above makes real PDFs, so the broken variants below test the loader."""
    from ingest.loaders import load

    path = tmp_path / "ok.pdf"
    path.write_bytes(pdf_bytes(HELLO_PDF_TEXT))
    assert [p.text for p in load(path, 10**9).parts()] == ["Hello from a hand-made PDF"]


# --------------------------------------------------------------------------------------------
# Where to ingest from
# --------------------------------------------------------------------------------------------


async def test_missing_folder_raises_source_not_found(open_env: OpenEnv, tmp_path: Path) -> None:
    env = await open_env(**SMALL)
    with pytest.raises(SourceNotFound, match="no such file or folder") as caught:
        await env.ingest(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(caught.value)
    assert caught.value.exit_code == 2


def test_cli_missing_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_rag(
        "ingest",
        str(tmp_path / "nowhere"),
        cwd=tmp_path,
        timeout=120,
        RAG_MILVUS_URI=str(tmp_path / "m.db"),
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == f"error: no such file or folder: {tmp_path / 'nowhere'}"
    assert "Traceback" not in result.stdout + result.stderr


async def test_empty_folder_is_fine(open_env: OpenEnv, tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    env, report, reporter = await ingest_with(open_env, folder)
    assert report.ok
    assert report.outcomes == [] and report.chunks_written == 0
    assert reporter.found == [0]
    assert await env.count() == 0


async def test_folder_of_unsupported_files_ingests_nothing(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", {"photo.png": PNG, "data.bin": os.urandom(100)})
    env, report, _ = await ingest_with(open_env, folder)
    assert report.ok and report.outcomes == []
    assert await env.count() == 0


# --------------------------------------------------------------------------------------------
# Unreadable files
# --------------------------------------------------------------------------------------------


async def test_broken_symlink_fails_with_reason(open_env: OpenEnv, tmp_path: Path) -> None:
    folder = write_files(tmp_path / "docs", GOOD)
    (folder / "x.txt").symlink_to(folder / "missing.txt")
    env, report, _ = await ingest_with(open_env, folder)
    outcome = by_source(report)["x.txt"]
    assert outcome.status == "failed"
    assert "No such file" in outcome.reason or "broken link" in outcome.reason
    assert not report.ok
    await assert_good_file_went_in(env, report)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
async def test_file_without_read_permission_fails(open_env: OpenEnv, tmp_path: Path) -> None:
    folder = write_files(tmp_path / "docs", {**GOOD, "locked.txt": "secret"})
    (folder / "locked.txt").chmod(0)
    try:
        env, report, _ = await ingest_with(open_env, folder)
    finally:
        (folder / "locked.txt").chmod(0o644)
    outcome = by_source(report)["locked.txt"]
    assert outcome.status == "failed"
    assert "ermission denied" in outcome.reason
    assert not report.ok
    await assert_good_file_went_in(env, report)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("image.txt", PNG),
        ("nul.md", b"# Title\n\nText with a \x00 NUL byte inside.\n"),
        ("page.html", b"<html><body>\x00\x01\x02 binary</body></html>"),
    ],
    ids=["png-named-txt", "nul-in-markdown", "nul-in-html"],
)
async def test_binary_content_in_a_text_file_fails(
    open_env: OpenEnv, tmp_path: Path, name: str, content: bytes
) -> None:
    folder = write_files(tmp_path / "docs", {**GOOD, name: content})
    env, report, _ = await ingest_with(open_env, folder)
    outcome = by_source(report)[name]
    assert outcome.status == "failed"
    assert "binary content" in outcome.reason
    assert not report.ok
    await assert_good_file_went_in(env, report)


async def test_invalid_utf8_is_decoded_with_a_note(open_env: OpenEnv, tmp_path: Path) -> None:
    """Invalid UTF-8 in the first 64 KiB: guessed (Windows-1252 here), loaded, and noted."""
    text = "Crème brûlée costs €4.50 in the canteen; the façade is naïve.\n"
    folder = write_files(tmp_path / "docs", {**GOOD, "legacy.txt": text.encode("cp1252")})
    env, report, reporter = await ingest_with(open_env, folder)
    assert report.ok
    assert by_source(report)["legacy.txt"].status == "added"
    assert reporter.notes == [("legacy.txt", "not valid UTF-8; decoded as cp1252")]
    rows = await env.rows('source == "legacy.txt"')
    assert [r["text"] for r in rows] == [f"legacy\n\n{text.strip()}"]  # header, then text


async def test_invalid_utf8_late_in_the_file_fails_with_position(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    head = ("Plain ASCII line about drones.\n" * 3000).encode()
    folder = write_files(tmp_path / "docs", {**GOOD, "late.txt": head + b"\xff bad byte\n"})
    env, report, _ = await ingest_with(open_env, folder)
    outcome = by_source(report)["late.txt"]
    assert outcome.status == "failed"
    assert outcome.reason == f"invalid utf-8 at byte {len(head)}"
    await assert_good_file_went_in(env, report)


async def test_random_bytes_fail_as_not_text(open_env: OpenEnv, tmp_path: Path) -> None:
    rng = random.Random(7)
    noise = bytes(rng.getrandbits(8) | 1 for _ in range(3000))  # no NUL bytes
    folder = write_files(tmp_path / "docs", {**GOOD, "noise.txt": noise})
    env, report, _ = await ingest_with(open_env, folder)
    outcome = by_source(report)["noise.txt"]
    assert outcome.status == "failed"
    assert "not valid UTF-8" in outcome.reason
    await assert_good_file_went_in(env, report)


# --------------------------------------------------------------------------------------------
# Empty files
# --------------------------------------------------------------------------------------------


async def test_empty_and_blank_files_are_skipped(open_env: OpenEnv, tmp_path: Path) -> None:
    folder = write_files(
        tmp_path / "docs",
        {**GOOD, "empty.txt": b"", "blank.md": "  \n\n\t\n", "bom.txt": b"\xef\xbb\xbf"},
    )
    env, report, _ = await ingest_with(open_env, folder)
    outcomes = by_source(report)
    for name in ("empty.txt", "blank.md", "bom.txt"):
        assert outcomes[name].status == "skipped"
        assert "empty" in outcomes[name].reason
    assert report.ok  # skipped is not failed
    assert await env.count() == 1


async def test_file_emptied_after_ingest_loses_its_old_chunks(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", {**GOOD, "notes.txt": "Old text that was removed."})
    env, report, _ = await ingest_with(open_env, folder)
    assert await env.count('source == "notes.txt"') == 1
    (folder / "notes.txt").write_text("")
    report = await env.ingest(folder)
    assert by_source(report)["notes.txt"].status == "skipped"
    # its text is gone from the file, so it must not be found any more either
    assert await env.count('source == "notes.txt"') == 0
    hits = await env.store.asimilarity_search_with_score("Old text that was removed", k=5)
    assert all(doc.metadata["source"] != "notes.txt" for doc, _ in hits)


# --------------------------------------------------------------------------------------------
# Damaged documents
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("random.pdf", random.Random(1).randbytes(5000), "corrupt or unreadable PDF"),
        ("text.pdf", b"this is not a PDF at all", "corrupt or unreadable PDF"),
        ("empty.pdf", b"", "corrupt or unreadable PDF"),
        (
            "bad-filter.pdf",
            pdf_bytes(HELLO_PDF_TEXT, b"/Filter /NoSuchFilter"),
            "corrupt or unreadable PDF",
        ),
        ("no-text.pdf", pdf_bytes(b""), "no extractable text"),
        ("random.docx", random.Random(2).randbytes(5000), "corrupt or unreadable DOCX"),
        ("fake.docx", b"PK\x05\x06" + bytes(18), "corrupt or unreadable DOCX"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.endswith(("pdf", "docx")) else "",
)
async def test_damaged_document_fails_and_the_rest_goes_in(
    open_env: OpenEnv, tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    folder = write_files(tmp_path / "docs", {**GOOD, name: content})
    env, report, _ = await ingest_with(open_env, folder)
    outcome = by_source(report)[name]
    assert outcome.status == "failed"
    assert reason in outcome.reason
    assert "\n" not in outcome.reason
    assert not report.ok
    await assert_good_file_went_in(env, report)


async def test_truncated_sample_pdf_fails(open_env: OpenEnv, tmp_path: Path) -> None:
    original = (Path(__file__).parents[2] / "sample_docs" / "price_list_2025.pdf").read_bytes()
    folder = write_files(tmp_path / "docs", {**GOOD, "cut.pdf": original[: len(original) // 2]})
    env, report, _ = await ingest_with(open_env, folder)
    assert by_source(report)["cut.pdf"].status == "failed"
    await assert_good_file_went_in(env, report)


# --------------------------------------------------------------------------------------------
# Size
# --------------------------------------------------------------------------------------------


async def test_docx_zip_bombs_are_refused_and_the_rest_goes_in(
    open_env: OpenEnv, tmp_path: Path
) -> None:
    """A 200 MB document.xml deflated to under 1 MB, and the same bomb declaring 0.5 MB, are
    refused in one line each without being expanded; a normal DOCX beside them goes in."""
    import docx

    folder = write_files(tmp_path / "docs", GOOD)
    bomb = write_docx_bomb(folder / "bomb.docx")
    lie_about_document_size(bomb, folder / "liar.docx", 512 * 1024, forge_crc=False)
    normal = docx.Document()
    normal.add_paragraph("Rotor blades are replaced every 400 flight hours.")
    normal.save(str(folder / "normal.docx"))
    assert bomb.stat().st_size < 1024 * 1024

    tracemalloc.start()
    try:
        env, report, reporter = await ingest_with(open_env, folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outcomes = by_source(report)
    assert outcomes["bomb.docx"].status == "failed"
    assert outcomes["bomb.docx"].reason.startswith(
        "DOCX refused: 'word/document.xml' would expand"
    ), outcomes["bomb.docx"].reason
    assert outcomes["liar.docx"].status == "failed"
    assert "does not match its declared size and checksum" in outcomes["liar.docx"].reason
    for name in ("bomb.docx", "liar.docx"):
        assert "\n" not in outcomes[name].reason
        assert any(o.source == name and o.status == "failed" for o in reporter.done)
    assert not report.ok
    await assert_good_file_went_in(env, report)
    assert outcomes["normal.docx"].status == "added"
    assert await env.count('source == "normal.docx"') == 1
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MiB traced while ingesting a bomb"


async def test_file_above_max_file_mb_is_refused(open_env: OpenEnv, tmp_path: Path) -> None:
    big = "A line of text about drone maintenance.\n" * 3000  # 120 kB
    folder = write_files(tmp_path / "docs", {**GOOD, "big.txt": big})
    env, report, _ = await ingest_with(open_env, folder, max_file_mb=0.05)
    outcome = by_source(report)["big.txt"]
    assert outcome.status == "failed"
    assert "RAG_MAX_FILE_MB" in outcome.reason
    assert "above the limit of 0.05 MB" in outcome.reason
    assert not report.ok
    await assert_good_file_went_in(env, report)


class HashEmbeddings(Embeddings):
    """A fast deterministic stand-in for an embedding model (the store stays real Milvus)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = []
        for text in texts:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
            vectors.append((vector / np.linalg.norm(vector)).tolist())
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def write_big_file(path: Path, megabytes: int) -> int:
    lines = [
        f"Maintenance log entry {i}: rotor {i % 4} inspected, battery pack cycled, "
        f"firmware checked, payload bay sealed, sensor {i % 9} calibrated."
        for i in range(2000)
    ]
    block = "\n".join(lines) + "\n\n"
    with path.open("w", encoding="ascii") as handle:
        handle.write("FIRST-LINE-MARKER start of the big log\n")
        for number in range(megabytes * 1024 * 1024 // len(block)):
            handle.write(f"Section {number}\n")
            handle.write(block)
        handle.write("LAST-LINE-MARKER end of the big log\n")
    return path.stat().st_size


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_huge_text_file_is_streamed_with_bounded_memory(
    milvus_server: str, tmp_path: Path
) -> None:
    """30 MB goes through the streaming path; the pipeline never holds the file.

    Milvus runs in its own process here, so tracemalloc sees only this process: the
    loader, splitter, the batches in flight (at most 3 x RAG_CONCURRENCY of them) and
    the client. Holding the file once would cost its size; the budget is half of it.
    (Measured: ~14 MB; 26 MB when the first 5000 chunks of the file were kept.)
    """
    folder = tmp_path / "docs"
    folder.mkdir()
    size = write_big_file(folder / "big.log.txt", 30)
    assert size > 7 * STREAM_THRESHOLD
    (folder / "good.md").write_text(GOOD["good.md"])
    settings = make_settings(
        milvus_server, "huge_file", chunk_size=4000, chunk_overlap=200, batch_size=64, concurrency=4
    )
    store = await asyncio.to_thread(
        open_store, settings, HashEmbeddings(), 384, embedding_model=MODEL, recreate=True
    )
    tracemalloc.start()
    try:
        report = await ingest_path(folder, store, settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outcomes = by_source(report)
    assert report.ok
    assert outcomes["good.md"].status == "added"
    chunks = outcomes["big.log.txt"].chunks
    assert chunks > size // 4000
    assert peak < size / 2, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"

    total = await store.aclient.query(
        "huge_file", filter='source == "big.log.txt"', output_fields=["count(*)"]
    )
    assert total[0]["count(*)"] == chunks
    ends = await store.aclient.query(
        "huge_file",
        filter=f'source == "big.log.txt" and chunk_index in [0, {chunks - 1}]',
        output_fields=["text", "chunk_index", "chunk_count"],
    )
    by_index = {row["chunk_index"]: row for row in ends}
    assert "FIRST-LINE-MARKER" in by_index[0]["text"]
    assert "LAST-LINE-MARKER" in by_index[chunks - 1]["text"]
    assert {row["chunk_count"] for row in ends} == {chunks}
    again = await ingest_path(folder, store, settings)
    assert by_source(again)["big.log.txt"].status == "unchanged"
    assert again.chunks_written == 0
