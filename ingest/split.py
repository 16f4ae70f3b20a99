"""Cut loaded documents into chunks with langchain-text-splitters.

Markdown (and HTML/DOCX, whose headings the loaders turn into Markdown) is first
split on headings so each chunk knows its section; everything is then cut by
the recursive character splitter to the configured size.

Sections are found here rather than by langchain's MarkdownHeaderTextSplitter: that one
rebuilds the text line by line and drops every character ``str.isprintable`` rejects,
so tabs vanished ("Drone\t1200" became "Drone1200"), as did zero-width joiners inside
emoji, right-to-left marks and code indentation. Here a section is a verbatim slice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from ingest.loaders import LoadedFile

MAX_HEADING_LEVEL = 4  # "#" to "####" start a section; deeper headings stay in the text
_HEADING = re.compile(rf"(#{{1,{MAX_HEADING_LEVEL}}})(?:\s+(.*))?")


@dataclass(frozen=True)
class Chunk:
    """One piece of text to embed, with where it came from."""

    text: str
    page: int | None
    section: str


class Splitter:
    """Holds configured splitters; reusable across files and threads (they are stateless)."""

    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self.recursive = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size, chunk_overlap=chunk_overlap, strip_whitespace=True
        )

    def chunks(self, loaded: LoadedFile) -> Iterator[Chunk]:
        """Blocking, lazy and deterministic: the same file always gives the same chunks."""
        for part in loaded.parts():
            if loaded.markdown:
                for path, text in sections(part.text):
                    yield from self._cut(text, part.page, path)
            else:
                yield from self._cut(part.text, part.page, "")

    def _cut(self, text: str, page: int | None, section: str) -> Iterator[Chunk]:
        for piece in self.recursive.split_text(text):
            if piece.strip():
                yield Chunk(piece, page, section)


def sections(text: str) -> Iterator[tuple[str, str]]:
    """(heading path like "Guide > Install", verbatim text) for each Markdown section.

    A heading line (stripped) is 1 to 4 "#" then a space or nothing; lines inside ```
    or ~~~ fences are never headings. The heading line stays in its section's text, and
    headings with nothing under them but another heading ride along with that next
    section (as langchain did), so no chunk is a bare title. Slices are contiguous:
    joining them gives back ``text`` exactly.
    """
    stack: list[tuple[int, str]] = []
    path, start, position, fence, body = "", 0, 0, "", False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        heading = None
        if fence:
            if stripped.startswith(fence):
                fence = ""
        elif stripped.startswith("```") and stripped.count("```") == 1:
            fence = "```"
        elif stripped.startswith("~~~"):
            fence = "~~~"
        else:
            heading = _HEADING.fullmatch(stripped)
        if heading:
            if body:
                yield path, text[start:position]
                start, body = position, False
            level, title = len(heading[1]), (heading[2] or "").strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            path = " > ".join(t for _, t in stack if t)
        elif stripped:
            body = True
        position += len(line)
    if position > start:
        yield path, text[start:position]
