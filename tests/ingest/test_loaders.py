"""Each loader on the sample corpus and on generated edge cases (encodings, big files)."""

from __future__ import annotations

import codecs
import copy
import hashlib
import io
import re
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import docx
import pytest

from ingest.loaders import (
    ARCHIVE_MAX_EXPANDED,
    ARCHIVE_MIN_EXPANDED,
    BLOCK_SIZE,
    SAMPLE_SIZE,
    STREAM_THRESHOLD,
    LoadedFile,
    LoadError,
    archive_limit,
    load,
    read_archive_bounded,
)
from ingest.split import Splitter
from tests.conftest import SAMPLE_DOCS, load_questions

NO_LIMIT = 10**12
WESTERN = (
    "Café crème costs €4.50 in the Rotterdam canteen — naïve façade, Zürich résumé.\n"
    "Über die Brücke: Größe, Straße; Ålesund, Æbeltoft, señor, déjà vu, “quoted”.\n"
)


def full_text(loaded: LoadedFile) -> str:
    return "".join(part.text for part in loaded.parts())


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# --------------------------------------------------------------------------------------------
# Markdown and plain text
# --------------------------------------------------------------------------------------------


def test_markdown_title_comes_from_first_heading() -> None:
    loaded = load(SAMPLE_DOCS / "onboarding_guide.md", NO_LIMIT)
    assert loaded.title == "Quillmoor Drone Works — New Starter Onboarding Guide"
    assert loaded.markdown
    assert loaded.notes == []
    text = full_text(loaded)
    assert "**09:30**" in text  # Markdown is kept as written
    assert text == (SAMPLE_DOCS / "onboarding_guide.md").read_text(encoding="utf-8")


def test_markdown_without_heading_is_titled_by_file_name(tmp_path: Path) -> None:
    path = tmp_path / "release-notes.md"
    path.write_text("Just a paragraph.\n\n## A second-level heading only\n")
    assert load(path, NO_LIMIT).title == "release-notes"


def test_text_file_is_plain_text_titled_by_file_name() -> None:
    path = SAMPLE_DOCS / "it_helpdesk_guide.txt"
    loaded = load(path, NO_LIMIT)
    assert (loaded.title, loaded.markdown) == ("it_helpdesk_guide", False)
    assert full_text(loaded) == path.read_text(encoding="utf-8")


def test_unknown_suffix_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("sku,price\nSRV-DIAG,180\n")
    loaded = load(path, NO_LIMIT)
    assert not loaded.markdown
    assert "SRV-DIAG,180" in full_text(loaded)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>Range Rules | Intranet</title>
<style>.x { color: red } /* STYLEMARK */</style>
<script>var tracking = "SCRIPTMARK";</script></head>
<body>
<header><a href="/">HEADERMARK home</a></header>
<nav><ul><li><a href="/a">NAVMARK link</a></li></ul></nav>
<main>
<h1>Range Rules</h1>
<p>Visitors sign in at the <strong>gate house</strong>.</p>
<h2>Flags</h2>
<ul><li>Red flag: flights in progress.</li><li>Green flag: range is safe.</li></ul>
<h3>Night flights</h3>
<p>Only with a permit.</p>
<noscript>NOSCRIPTMARK</noscript>
<template><p>TEMPLATEMARK</p></template>
</main>
<footer>FOOTERMARK copyright</footer>
</body></html>
"""


def test_html_strips_scripts_navigation_and_chrome(tmp_path: Path) -> None:
    path = tmp_path / "range.html"
    path.write_text(PAGE)
    loaded = load(path, NO_LIMIT)
    text = full_text(loaded)
    assert loaded.title == "Range Rules | Intranet"
    assert loaded.markdown
    for marker in ("SCRIPTMARK", "STYLEMARK", "NAVMARK", "HEADERMARK", "FOOTERMARK"):
        assert marker not in text
    assert "NOSCRIPTMARK" not in text and "TEMPLATEMARK" not in text
    assert "Visitors sign in at the" in text and "gate house" in text
    assert "<" not in text and "&" not in text


def test_html_headings_become_markdown_sections(tmp_path: Path) -> None:
    path = tmp_path / "range.html"
    path.write_text(PAGE)
    text = full_text(load(path, NO_LIMIT))
    lines = text.splitlines()
    assert "# Range Rules" in lines
    assert "## Flags" in lines
    assert "### Night flights" in lines
    assert text.index("# Range Rules") < text.index("## Flags") < text.index("### Night flights")
    assert re.search(r"^- ?\s*Red flag: flights in progress\.", text, flags=re.MULTILINE)
    sections = {c.section for c in Splitter(1000, 100).chunks(load(path, NO_LIMIT))}
    assert "Range Rules > Flags > Night flights" in sections


def test_html_table_cells_stay_separate_words(tmp_path: Path) -> None:
    """Cells are separated: "<td>Wingspan</td><td>2.9 m</td>" was "Wingspan2.9 m"."""
    path = tmp_path / "specs.html"
    path.write_text(
        "<html><body><table><tr><th>Property</th><th>Value</th></tr>"
        "<tr><td>Wingspan</td><td>2.9 m</td></tr></table></body></html>"
    )
    lines = full_text(load(path, NO_LIMIT)).splitlines()
    assert "Property | Value" in lines
    assert "Wingspan | 2.9 m" in lines


def test_html_without_title_tag_uses_first_heading(tmp_path: Path) -> None:
    path = tmp_path / "untitled.htm"
    path.write_text(
        "<html><body><h1>Battery Safety</h1><p>Charge in the cabinet.</p></body></html>"
    )
    assert load(path, NO_LIMIT).title == "Battery Safety"


def test_sample_html_page() -> None:
    loaded = load(SAMPLE_DOCS / "company_org_overview.html", NO_LIMIT)
    text = squash(full_text(loaded))
    assert loaded.title == "Who We Are: Teams and Leadership | Quillmoor Intranet"
    assert "# Who We Are: Teams and Leadership" in text
    assert "Quillmoor employed 143 people" in text
    assert "People & Teams" not in text  # an intranet navigation link


def test_html_entities_and_charset_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "latin.html"
    path.write_bytes(
        b'<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head>'
        b"<body><p>Cr\xe8me &amp; caf&eacute; &euro;4</p></body></html>"
    )
    loaded = load(path, NO_LIMIT)
    assert loaded.title == "Café"
    assert "Crème & café €4" in full_text(loaded)


# --------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------


def test_pdf_keeps_page_numbers() -> None:
    loaded = load(SAMPLE_DOCS / "employee_handbook_2025.pdf", NO_LIMIT)
    parts = list(loaded.parts())
    assert loaded.title == "Quillmoor Employee Handbook 2025.1"
    assert not loaded.markdown
    assert [p.page for p in parts] == list(range(1, len(parts) + 1))
    assert len(parts) >= 4
    pages = {p.page: squash(p.text) for p in parts}
    # "Who has to approve an expense claim of EUR 1,200 ...?" -> Ilse Brouwer, page 3
    assert "Ilse Brouwer" in pages[3]
    assert all("Ilse Brouwer" not in text for page, text in pages.items() if page != 3)


@pytest.mark.parametrize(
    "question",
    [q for q in load_questions() if "page" in q],
    ids=lambda q: q["answer"],
)
def test_pdf_answer_is_on_the_page_the_gold_data_names(question: dict[str, object]) -> None:
    parts = list(load(SAMPLE_DOCS / str(question["source"]), NO_LIMIT).parts())
    pages = [p.page for p in parts if str(question["answer"]) in squash(p.text)]
    assert pages == [question["page"]]


# --------------------------------------------------------------------------------------------
# DOCX
# --------------------------------------------------------------------------------------------


def test_sample_docx_headings_and_tables() -> None:
    loaded = load(SAMPLE_DOCS / "warranty_and_returns.docx", NO_LIMIT)
    text = full_text(loaded)
    assert loaded.title == "Warranty and Returns Policy"
    assert loaded.markdown
    lines = text.splitlines()
    assert "# Warranty and Returns Policy" in lines  # the Title style
    assert "## 2. Warranty periods" in lines  # Heading 1
    assert "### 4.1 Shipping costs" in lines  # Heading 2
    assert "DockPost DP-7 station | 36 months" in lines  # a table row


def test_docx_table_stays_in_its_section() -> None:
    """A table belongs to the heading above it, so its chunk records that section."""
    loaded = load(SAMPLE_DOCS / "warranty_and_returns.docx", NO_LIMIT)
    chunks = [c for c in Splitter(1000, 150).chunks(loaded) if "DockPost DP-7 station" in c.text]
    assert chunks
    assert {c.section for c in chunks} == {"Warranty and Returns Policy > 2. Warranty periods"}


def test_generated_docx(tmp_path: Path) -> None:
    document = docx.Document()
    document.core_properties.title = ""
    document.add_paragraph("Battery Handbook", style="Title")
    document.add_paragraph("Intro paragraph.")
    document.add_heading("Storage", level=1)
    document.add_paragraph("Store packs at 40 to 60 percent charge.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Pack", "Cycles"
    table.cell(1, 0).text, table.cell(1, 1).text = "WB-48", "300"
    document.add_heading("Disposal", level=2)
    document.add_paragraph("")  # empty paragraphs are dropped
    document.add_paragraph("Return used packs to Rotterdam.")
    path = tmp_path / "battery.docx"
    document.save(str(path))

    loaded = load(path, NO_LIMIT)
    assert loaded.title == "Battery Handbook"
    blocks = full_text(loaded).split("\n\n")
    assert blocks == [
        "# Battery Handbook",
        "Intro paragraph.",
        "## Storage",
        "Store packs at 40 to 60 percent charge.",
        "Pack | Cycles",
        "WB-48 | 300",
        "### Disposal",
        "Return used packs to Rotterdam.",
    ]


# --------------------------------------------------------------------------------------------
# DOCX zip bombs
# --------------------------------------------------------------------------------------------

BOMB_EXPANDED = 200 * 1024 * 1024  # what the bomb's word/document.xml expands to
BOMB_MARK = "Only the first line of a bomb."
DOCUMENT_XML = "word/document.xml"


def write_docx_bomb(path: Path, expanded: int = BOMB_EXPANDED) -> Path:
    """A valid DOCX (python-docx's own) whose document.xml holds ``expanded`` bytes of
    repeated text in one paragraph, deflated to well under 1 MB; written block by block."""
    template = io.BytesIO()
    document = docx.Document()
    document.add_paragraph(BOMB_MARK)
    document.save(template)
    block = b"bomb " * 13_000  # 65 kB
    with (
        zipfile.ZipFile(template) as source,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out,
    ):
        for member in source.infolist():
            data = source.read(member)
            if member.filename != DOCUMENT_XML:
                out.writestr(member.filename, data)
                continue
            head, tail = data.split(b"<w:body>")
            with out.open(DOCUMENT_XML, "w") as target:
                target.write(head + b"<w:body><w:p><w:r><w:t>")
                for _ in range(expanded // len(block)):
                    target.write(block)
                target.write(b"</w:t></w:r></w:p>" + tail)
    return path


def lie_about_document_size(bomb: Path, path: Path, declared: int, *, forge_crc: bool) -> Path:
    """A copy of ``bomb`` whose central directory declares ``declared`` bytes for
    document.xml; ``forge_crc`` also gives the CRC of those first bytes, so the cut
    member passes zipfile's checksum (what a careful attacker would do)."""
    data = bytearray(bomb.read_bytes())
    name = data.rfind(DOCUMENT_XML.encode())  # the last mention is the central directory's
    header = name - 46  # the fixed part of a central directory header is 46 bytes
    assert data[header : header + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, header + 24, declared)
    if forge_crc:
        with zipfile.ZipFile(bomb) as archive, archive.open(DOCUMENT_XML) as member:
            struct.pack_into("<I", data, header + 16, zlib.crc32(member.read(declared)))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def docx_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_docx_bomb(tmp_path_factory.mktemp("bomb") / "bomb.docx")
    assert path.stat().st_size < 1024 * 1024
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo(DOCUMENT_XML).file_size > BOMB_EXPANDED - 1024 * 1024
    return path


def refusal(path: Path, max_bytes: int) -> tuple[str, int, float]:
    """(the LoadError's message, tracemalloc peak, seconds) of loading ``path``."""
    started = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(LoadError) as caught:
            load(path, max_bytes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "\n" not in message
    return message, peak, time.perf_counter() - started


def test_the_bomb_builder_makes_a_valid_docx(tmp_path: Path) -> None:
    """The same builder with a small expansion makes a DOCX that loads, so the refusals
    below are about size, not about a broken file."""
    path = write_docx_bomb(tmp_path / "small.docx", expanded=900 * 1024)  # under the ratio floor
    text = full_text(load(path, NO_LIMIT))
    assert text.startswith("bomb bomb") and text.endswith(BOMB_MARK)
    assert len(text) > 900 * 1024 - 65_000


def test_docx_bomb_is_refused_by_its_ratio_without_expanding(docx_bomb: Path) -> None:
    assert archive_limit(NO_LIMIT) == ARCHIVE_MAX_EXPANDED > BOMB_EXPANDED  # the ratio decides
    message, peak, seconds = refusal(docx_bomb, NO_LIMIT)
    assert re.fullmatch(
        r"DOCX refused: 'word/document.xml' would expand \d+ times, to 200.0 MB \(a zip bomb\?\)",
        message,
    ), message
    assert peak < 2 * 1024 * 1024 and seconds < 2


def test_docx_above_ten_times_the_file_limit_is_refused_without_expanding(
    docx_bomb: Path,
) -> None:
    message, peak, seconds = refusal(docx_bomb, 4 * 1024 * 1024)
    assert re.fullmatch(
        r"DOCX refused: it would expand to 20\d\.\d MB, above the 40\.0 MB a document may "
        r"expand to \(10 x RAG_MAX_FILE_MB, within 16\.0 MB to 256\.0 MB\)",
        message,
    ), message
    assert peak < 2 * 1024 * 1024 and seconds < 2


@pytest.mark.parametrize("forge_crc", [False, True], ids=["crc-fails", "crc-forged"])
def test_docx_whose_declared_size_lies_is_cut_at_that_size(
    docx_bomb: Path, tmp_path: Path, forge_crc: bool
) -> None:
    """Declared small enough to pass the checks, the member is read only that far: with its
    own CRC the cut fails the checksum; with a forged one python-docx gets the cut XML."""
    declared = 512 * 1024
    path = lie_about_document_size(docx_bomb, tmp_path / "liar.docx", declared, forge_crc=forge_crc)
    message, peak, seconds = refusal(path, NO_LIMIT)
    if forge_crc:
        assert message.startswith("corrupt or unreadable DOCX (XMLSyntaxError"), message
    else:
        assert message.startswith(
            "DOCX refused: 'word/document.xml' does not match its declared size and checksum"
        ), message
    assert peak < 16 * 1024 * 1024 < BOMB_EXPANDED // 10, peak
    assert seconds < 5


def many_members_docx(path: Path, members: int) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for number in range(members):
            archive.writestr(f"word/media/m{number}.bin", b"")
    return path


def test_docx_with_too_many_members_is_refused(tmp_path: Path) -> None:
    message, _, _ = refusal(many_members_docx(tmp_path / "many.docx", 10_001), NO_LIMIT)
    assert message == "DOCX refused: 10001 archive members, more than 10000"


def test_docx_member_name_with_a_line_break_stays_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "named.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("word/evil\nname.xml", b"x" * (4 * 1024 * 1024))
    message, _, _ = refusal(path, NO_LIMIT)
    assert message.startswith("DOCX refused: 'word/evil\\nname.xml' would expand"), message


def test_repetitive_generated_docx_is_not_taken_for_a_bomb(tmp_path: Path) -> None:
    """A machine-made report of one line repeated compresses over 250:1: under the ratio."""
    document = docx.Document()
    paragraph = document.add_paragraph("Same line of text again and again.")._p
    for _ in range(39_999):  # copies of the element: python-docx's API is slow at this size
        paragraph.addnext(copy.deepcopy(paragraph))
    path = tmp_path / "report.docx"
    document.save(str(path))
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo(DOCUMENT_XML)
    assert member.file_size > max(250 * member.compress_size, 2 * 1024 * 1024)
    # The archive checks pass (parsing 40,000 paragraphs with python-docx takes long).
    with zipfile.ZipFile(read_archive_bounded(path, archive_limit(NO_LIMIT), "DOCX")) as repacked:
        assert repacked.read(DOCUMENT_XML).count(b"Same line of text again and again.") == 40_000


def test_small_docx_loads_under_a_file_limit_of_its_own_size() -> None:
    """Word's styles make a small DOCX expand 20 times: the 16 MiB floor lets it in."""
    path = SAMPLE_DOCS / "warranty_and_returns.docx"
    with zipfile.ZipFile(path) as archive:
        expanded = sum(member.file_size for member in archive.infolist())
    assert expanded > 10 * path.stat().st_size  # what the floor is for
    assert archive_limit(path.stat().st_size) == ARCHIVE_MIN_EXPANDED
    loaded = load(path, path.stat().st_size)
    assert "DockPost DP-7 station | 36 months" in full_text(loaded)


# --------------------------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------------------------


LATIN1 = "Crème brûlée à Zürich, naïve façade; Ålesund, Æbeltoft, señor, déjà vu.\n"


@pytest.mark.parametrize(
    ("encoding", "text"), [("cp1252", WESTERN), ("latin-1", LATIN1)], ids=["cp1252", "latin-1"]
)
def test_legacy_western_encoding_loads_correctly_with_a_note(
    tmp_path: Path, encoding: str, text: str
) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes(text.encode(encoding))
    loaded = load(path, NO_LIMIT)
    assert full_text(loaded) == text
    assert len(loaded.notes) == 1
    assert "not valid UTF-8" in loaded.notes[0]


def test_legacy_encoding_on_the_sample_guide(tmp_path: Path) -> None:
    original = (SAMPLE_DOCS / "office_facilities_guide.txt").read_text(encoding="utf-8")
    text = original.replace("EUR ", "€").replace("Cafe", "Café") + "\nNaïve crème brûlée.\n"
    path = tmp_path / "office.txt"
    path.write_bytes(text.encode("cp1252"))
    loaded = load(path, NO_LIMIT)
    assert full_text(loaded) == text
    assert loaded.notes and "not valid UTF-8" in loaded.notes[0]


def test_non_latin_legacy_encoding_is_not_forced_to_western(tmp_path: Path) -> None:
    text = "Съешь же ещё этих мягких французских булок, да выпей чаю.\n" * 3
    path = tmp_path / "russian.txt"
    path.write_bytes(text.encode("cp1251"))
    assert full_text(load(path, NO_LIMIT)) == text


def test_utf8_bom_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "bom.md"
    path.write_bytes(codecs.BOM_UTF8 + "# Überschrift\n\nText.\n".encode())
    loaded = load(path, NO_LIMIT)
    assert full_text(loaded) == "# Überschrift\n\nText.\n"
    assert loaded.title == "Überschrift"
    assert loaded.notes == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_with_bom_loads(tmp_path: Path, encoding: str) -> None:
    data = WESTERN.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    path = tmp_path / "wide.txt"
    path.write_bytes(data)
    loaded = load(path, NO_LIMIT)
    assert full_text(loaded) == WESTERN
    assert loaded.notes == []


def test_utf16_without_bom_is_refused_as_binary(tmp_path: Path) -> None:
    path = tmp_path / "wide.txt"
    path.write_bytes(WESTERN.encode("utf-16-le"))
    with pytest.raises(LoadError, match="binary content"):
        load(path, NO_LIMIT)


def test_invalid_utf8_after_the_sample_fails_with_its_offset(tmp_path: Path) -> None:
    """Detection reads the first 64 KiB; a bad byte later fails the file with its position."""
    head = ("All plain ASCII here. " * 4000).encode()
    assert len(head) > SAMPLE_SIZE
    path = tmp_path / "late.txt"
    path.write_bytes(head + b"\xff\xfe oops")
    with pytest.raises(LoadError, match=rf"invalid utf-8 at byte {len(head)}"):
        load(path, NO_LIMIT)


def test_multibyte_character_cut_by_the_sample_boundary_is_fine(tmp_path: Path) -> None:
    text = "a" * (SAMPLE_SIZE - 1) + "é and more text\n"
    path = tmp_path / "edge.txt"
    path.write_text(text, encoding="utf-8")
    loaded = load(path, NO_LIMIT)
    assert full_text(loaded) == text
    assert loaded.notes == []


# --------------------------------------------------------------------------------------------
# load(): the wrapper's one-line reasons
# --------------------------------------------------------------------------------------------


def test_missing_file_and_folder_and_size_limit(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="disappeared or is a broken link"):
        load(tmp_path / "gone.txt", NO_LIMIT)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(LoadError, match="is a folder"):
        load(tmp_path / "folder.txt", NO_LIMIT)
    big = tmp_path / "big.txt"
    big.write_text("x" * 3_000_000)
    with pytest.raises(LoadError, match="RAG_MAX_FILE_MB") as caught:
        load(big, 1024 * 1024)
    assert "\n" not in str(caught.value)
    # in the unit RAG_MAX_FILE_MB is given in (1 MB = 1024 * 1024 bytes there)
    assert "2.86 MB is above the limit of 1 MB" in str(caught.value)
    assert load(big, 4 * 1024 * 1024).title == "big"


# --------------------------------------------------------------------------------------------
# Big files are streamed
# --------------------------------------------------------------------------------------------


STREAMING_BUDGET = 8 * BLOCK_SIZE  # bytes a streamed read (and split) may hold at once


def write_big_text(path: Path, megabytes: int, *, line_end: str = "\n") -> int:
    """About ``megabytes`` MiB of varied ASCII text, written block by block."""
    words = ["drone", "battery", "rotor", "payload", "charge", "wing", "sensor", "flight"]
    lines = [
        f"{' '.join(words[(i * 7 + k) % len(words)] for k in range(12))} {i}." for i in range(4000)
    ]
    block = line_end.join(lines) + line_end + line_end
    with path.open("w", encoding="ascii", newline="") as handle:
        for number in range(megabytes * 1024 * 1024 // len(block) + 1):
            handle.write(f"Block {number}.{line_end}")
            handle.write(block)
    return path.stat().st_size


def streamed_peak(path: Path, chunk_size: int = 4000) -> tuple[int, int, int]:
    """(parts, chunks, tracemalloc peak in bytes) of loading and splitting ``path``."""
    tracemalloc.start()
    try:
        loaded = load(path, NO_LIMIT)
        parts = 0
        longest = 0
        for part in loaded.parts():
            parts += 1
            longest = max(longest, len(part.text))
        chunks = sum(1 for _ in Splitter(chunk_size, 150).chunks(loaded))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert longest <= 2 * BLOCK_SIZE, "a part holds much more than one read block"
    return parts, chunks, peak


@pytest.mark.slow
def test_big_text_file_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    size = write_big_text(path, 20)
    assert size > 3 * STREAM_THRESHOLD
    parts, chunks, peak = streamed_peak(path)
    assert parts >= size // BLOCK_SIZE - 1
    assert chunks > size // 4000
    # Streaming needs a few read blocks whatever the file size; reading it whole (or
    # decoding it into one string) would already cost more than this.
    assert peak < STREAMING_BUDGET < size / 2, f"peak {peak / 1e6:.1f} MB, file {size / 1e6:.1f} MB"


@pytest.mark.parametrize("line_end", ["\r", " "], ids=["old-mac-line-ends", "one-line"])
def test_big_file_without_newlines_is_read_in_bounded_parts(tmp_path: Path, line_end: str) -> None:
    """With no "\n" to cut at, the reader must still cut, or it holds the whole file."""
    path = tmp_path / "one-line.txt"
    size = write_big_text(path, 18, line_end=line_end)
    assert b"\n" not in path.read_bytes()
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    parts = longest = 0
    tracemalloc.start()
    try:
        for part in load(path, NO_LIMIT).parts():
            parts += 1
            longest = max(longest, len(part.text))
            digest.update(part.text.encode("ascii"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == expected  # nothing lost or repeated at the cuts
    assert parts >= size // BLOCK_SIZE
    assert longest <= 2 * BLOCK_SIZE
    assert peak < STREAMING_BUDGET < size / 2, f"peak {peak / 1e6:.1f} MB, file {size / 1e6:.1f} MB"


def test_streamed_file_reads_back_identically_and_can_be_read_twice(tmp_path: Path) -> None:
    path = tmp_path / "big.md"
    text = "# Big Manual\n\n" + "".join(
        f"Line {i}: ünïcödé → text that crosses block boundaries.\n" for i in range(90_000)
    )
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size > STREAM_THRESHOLD
    loaded = load(path, NO_LIMIT)
    assert loaded.title == "Big Manual"
    first = [part.text for part in loaded.parts()]
    assert len(first) > 1
    assert "".join(first) == text
    assert [part.text for part in loaded.parts()] == first
