"""Property tests (hypothesis) for what every ingest depends on: loaders never crash on any
bytes except with their one-line ``LoadError``, text is decoded exactly, and splitting
never loses text nor repeats more than the configured overlap.

Splitting is checked by reconstruction: every chunk must be found in the source text (with
whitespace removed, since the splitters trim and re-join whitespace), no further back than
the overlap allows, and the chunks laid end to end must cover the whole text.
"""

from __future__ import annotations

import codecs
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

import ingest.loaders
from ingest.loaders import LoadedFile, LoadError, Part, load
from ingest.split import Splitter, sections
from tests.conftest import SAMPLE_DOCS

EXAMPLES = settings(max_examples=80, deadline=None)
# Characters that stress the splitters: separators, Markdown syntax, CRs, wide and combining.
TRICKY = st.sampled_from(
    ["\n", "\n\n", " ", "\t", "\r\n", "\r", "#", "# ", "## ", "```", "~~~", "- ", "|", "[1]",
     ".", ",", "a", "word ", "é", "e\u0301", "漢字", "🙂", "\u2028", "\x0b", "\x0c"]
)  # fmt: skip
TEXT = st.one_of(
    st.text(max_size=3000),
    st.lists(st.one_of(TRICKY, st.text(max_size=12)), max_size=400).map("".join),
)
SIZES = st.tuples(st.integers(100, 400), st.integers(0, 99))


def squeeze(text: str) -> str:
    return "".join(text.split())


def assert_reconstructs(text: str, chunks: list[str], size: int, overlap: int) -> None:
    """Greedy reconstruction on whitespace-free text: no loss, bounded repetition."""
    source = squeeze(text)
    covered = 0
    for chunk in chunks:
        assert len(chunk) <= size, f"chunk of {len(chunk)} > {size}"
        piece = squeeze(chunk)
        assert piece, "an empty chunk"
        # the latest place the chunk can start that leaves no gap, no further back than
        # the overlap allows (a chunk repeats at most `overlap` characters of the previous)
        best = -1
        start = source.find(piece, max(0, covered - overlap))
        while 0 <= start <= covered:
            best = start
            start = source.find(piece, start + 1)
        assert best >= 0, f"chunk {chunk!r} is not the next part of the text (lost or repeated)"
        covered = max(covered, best + len(piece))
    assert covered == len(source), f"text lost after {covered} of {len(source)} characters"


def chunks_of(text: str, markdown: bool, size: int, overlap: int) -> list[str]:
    loaded = LoadedFile("t", markdown, lambda: iter([Part(text)]))
    return [c.body for c in Splitter(size, overlap).chunks(loaded)]  # the header is added text


@EXAMPLES
@given(text=TEXT, sizes=SIZES)
def test_plain_text_splitting_loses_nothing_and_repeats_only_the_overlap(
    text: str, sizes: tuple[int, int]
) -> None:
    size, overlap = sizes
    assert_reconstructs(text, chunks_of(text, False, size, overlap), size, overlap)


@EXAMPLES
@given(text=TEXT, sizes=SIZES)
def test_markdown_splitting_loses_nothing_and_repeats_only_the_overlap(
    text: str, sizes: tuple[int, int]
) -> None:
    size, overlap = sizes
    assert_reconstructs(text, chunks_of(text, True, size, overlap), size, overlap)


def write(data: bytes, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as handle:
        handle.write(data)
    return Path(handle.name)


def load_and_split(path: Path) -> None:
    """The pipeline's view of a file: load, then split every part; LoadError is the only
    acceptable failure, and its message is one line."""
    try:
        loaded = load(path, 10 * 1024 * 1024)
        for chunk in Splitter(300, 30).chunks(loaded):
            assert chunk.text.strip()
    except LoadError as error:
        assert str(error) and "\n" not in str(error), repr(str(error))
    finally:
        path.unlink()


@EXAMPLES
@given(
    data=st.binary(max_size=4000),
    suffix=st.sampled_from([".txt", ".md", ".html", ".pdf", ".docx", ".csv", ""]),
)
def test_any_bytes_load_or_fail_with_the_loader_error(data: bytes, suffix: str) -> None:
    load_and_split(write(data, suffix))


SAMPLES = {
    ".pdf": (SAMPLE_DOCS / "price_list_2025.pdf").read_bytes(),
    ".docx": (SAMPLE_DOCS / "warranty_and_returns.docx").read_bytes(),
    ".html": (SAMPLE_DOCS / "customer_faq.html").read_bytes(),
}


@settings(max_examples=60, deadline=None)
@given(
    suffix=st.sampled_from(sorted(SAMPLES)),
    cut=st.floats(0.05, 1.0),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=20),
)
def test_damaged_real_documents_load_or_fail_with_the_loader_error(
    suffix: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(SAMPLES[suffix][: max(1, int(len(SAMPLES[suffix]) * cut))])
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    load_and_split(write(bytes(data), suffix))


@EXAMPLES
@given(
    text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=2000),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
    streamed=st.booleans(),
)
def test_text_files_decode_to_exactly_their_text(text: str, encoding: str, streamed: bool) -> None:
    """Also through the block-by-block reader of huge files (its thresholds made tiny here)."""
    path = write(text.encode(encoding), ".txt")
    limits = {"STREAM_THRESHOLD": 64, "BLOCK_SIZE": 16} if streamed else {"SAMPLE_SIZE": 65536}
    try:
        with mock.patch.multiple(ingest.loaders, **limits):
            try:
                loaded = load(path, 10 * 1024 * 1024)
            except LoadError as error:
                # only a NUL in the text makes a UTF-8 file look binary: refused, not garbled
                assert encoding != "utf-16" and "\x00" in text, error
                return
            decoded = "".join(part.text for part in loaded.parts())
    finally:
        path.unlink()
    expected = text.removeprefix("\ufeff") if encoding == "utf-8" else text
    if encoding == "utf-8" and not text.startswith("\ufeff"):
        expected = text
    assert decoded == expected or (decoded == text[1:] and text.startswith("\ufeff")), (
        f"{encoding}: {text!r} -> {decoded!r}"
    )
    assert codecs.lookup(encoding)


@EXAMPLES
@given(text=TEXT)
def test_markdown_sections_are_verbatim_slices(text: str) -> None:
    """Headings decide where sections start; not one character is changed or dropped."""
    assert "".join(part for _, part in sections(text)) == text


def test_tabs_and_invisible_characters_survive_markdown_splitting() -> None:
    text = "# Prices\n\nName\tPrice\nDrone\t1200\n\nfamily 👨\u200d👩\u200d👧 שלום\u200fworld\n"
    (chunk,) = chunks_of(text, True, 1000, 100)
    assert "Drone\t1200" in chunk and "👨\u200d👩\u200d👧" in chunk and "\u200f" in chunk
