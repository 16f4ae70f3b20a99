"""Splitting: sections from headings, bounded sizes, pages kept, deterministic, nothing lost."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from ingest.loaders import LoadedFile, Part, load
from ingest.split import Chunk, Splitter
from tests.conftest import SAMPLE_DOCS

NO_LIMIT = 10**12
SAMPLE_FILES = sorted(p for p in SAMPLE_DOCS.rglob("*") if p.is_file())


def loaded_text(text: str, *, markdown: bool, page: int | None = None) -> LoadedFile:
    return LoadedFile("t", markdown, lambda: iter([Part(text, page)]))


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


def test_markdown_sections_are_recorded_as_heading_paths() -> None:
    text = (
        "# Handbook\n\nIntro text.\n\n"
        "## Leave\n\nYou get 27 days.\n\n"
        "### Carry-over\n\nUse them by 1 July.\n\n"
        "## Travel\n\nBook through the portal.\n\n"
        "# Appendix\n\nForms.\n"
    )
    chunks = list(Splitter(1000, 100).chunks(loaded_text(text, markdown=True)))
    sections = {c.text.splitlines()[-1].strip(): c.section for c in chunks}
    assert sections == {
        "Intro text.": "Handbook",
        "You get 27 days.": "Handbook > Leave",
        "Use them by 1 July.": "Handbook > Leave > Carry-over",
        "Book through the portal.": "Handbook > Travel",
        "Forms.": "Appendix",
    }
    # headings stay in the chunk text, so the passage shown to a user keeps its title
    assert any(c.body.startswith("## Leave") for c in chunks)


def test_plain_text_has_no_section_even_with_hash_lines() -> None:
    chunks = list(
        Splitter(1000, 100).chunks(loaded_text("# not a heading here\n\nbody", markdown=False))
    )
    assert [c.section for c in chunks] == [""]


@pytest.mark.parametrize(("size", "overlap"), [(100, 0), (300, 50), (1000, 150), (4000, 400)])
def test_chunks_never_exceed_chunk_size(size: int, overlap: int) -> None:
    splitter = Splitter(size, overlap)
    longest = 0
    for path in SAMPLE_FILES:
        for chunk in splitter.chunks(load(path, NO_LIMIT)):
            assert len(chunk.text) <= size, (path.name, len(chunk.text))
            assert chunk.body.strip(), "an empty chunk would be embedded for nothing"
            longest = max(longest, len(chunk.body))
    assert longest > size * 0.6  # the limit is actually approached, chunks are not tiny


def test_one_long_word_is_still_cut_to_size() -> None:
    chunks = list(Splitter(200, 20).chunks(loaded_text("x" * 1000, markdown=False)))
    assert chunks and all(len(c.text) <= 200 for c in chunks)
    assert "".join(c.body for c in chunks).count("x") >= 1000


def test_neighbouring_chunks_overlap() -> None:
    text = " ".join(f"word{i}" for i in range(400))
    chunks = [c.body for c in Splitter(200, 60).chunks(loaded_text(text, markdown=False))]
    assert len(chunks) > 5
    for first, second in itertools.pairwise(chunks):
        shared = words(first) & words(second)
        assert shared, "overlap lost: neighbours share no word"


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_splitting_is_deterministic_and_loses_no_words(path: Path) -> None:
    first = list(Splitter(500, 80).chunks(load(path, NO_LIMIT)))
    again = list(Splitter(500, 80).chunks(load(path, NO_LIMIT)))
    assert first == again
    assert len(first) > 1
    source_words = words("".join(p.text for p in load(path, NO_LIMIT).parts()))
    chunk_words = set().union(*(words(c.text) for c in first))
    assert source_words <= chunk_words


def test_pdf_chunks_keep_their_page() -> None:
    loaded = load(SAMPLE_DOCS / "employee_handbook_2025.pdf", NO_LIMIT)
    pages = [p.page for p in loaded.parts()]
    chunks = list(Splitter(500, 50).chunks(loaded))
    assert {c.page for c in chunks} == set(pages)
    by_page: dict[int | None, list[Chunk]] = {}
    for chunk in chunks:
        by_page.setdefault(chunk.page, []).append(chunk)
    assert any("Ilse Brouwer" in c.text for c in by_page[3])
    # a chunk never spans two pages: its words all come from its own page
    texts = {p.page: p.text for p in loaded.parts()}
    for chunk in chunks:
        assert chunk.body in texts[chunk.page]


def test_markdown_sample_sections() -> None:
    chunks = list(Splitter(1000, 150).chunks(load(SAMPLE_DOCS / "onboarding_guide.md", NO_LIMIT)))
    top = "Quillmoor Drone Works — New Starter Onboarding Guide"
    assert all(c.section.startswith(top) for c in chunks)
    first_day = [c for c in chunks if "**09:30** at the Rotterdam reception" in c.text]
    assert [c.section for c in first_day] == [f"{top} > Your first day"]


def test_chunks_carry_their_title_and_the_headings_their_text_does_not_repeat() -> None:
    text = "# Heron\n\n## Airframe\n\n" + "Wingspan | 2.9 m\n\n" * 60
    loaded = LoadedFile("Heron QH-640 specifications", True, lambda: iter([Part(text)]))
    chunks = list(Splitter(300, 0).chunks(loaded))
    assert chunks[0].header == "Heron QH-640 specifications"  # "## Airframe" is in its text
    assert chunks[-1].header == "Heron QH-640 specifications > Airframe"
    # the stored text is the header, a blank line, then the verbatim slice
    assert chunks[-1].text == f"{chunks[-1].header}\n\n{chunks[-1].body}"


def test_a_file_name_standing_in_for_a_title_reads_as_words() -> None:
    loaded = loaded_text("Lost badges cost EUR 15.", markdown=False)
    named = LoadedFile("office_facilities_guide", False, loaded.parts)
    [chunk] = Splitter(1000, 100).chunks(named)
    assert chunk.text == "office facilities guide\n\nLost badges cost EUR 15."
