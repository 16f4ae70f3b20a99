"""Each loader on the sample corpus and on generated edge cases (encodings, big files)."""

from __future__ import annotations

import codecs
import hashlib
import re
import tracemalloc
from pathlib import Path

import docx
import pytest

from ingest.loaders import BLOCK_SIZE, SAMPLE_SIZE, STREAM_THRESHOLD, LoadedFile, LoadError, load
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
