"""Cut loaded documents into chunks with langchain-text-splitters.

Markdown (and HTML/DOCX, whose headings the loaders turn into Markdown) is first
split on headings so each chunk knows its section; everything is then cut by
the recursive character splitter to the configured size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

from ingest.loaders import LoadedFile

HEADINGS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]


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
        self.markdown = MarkdownHeaderTextSplitter(
            headers_to_split_on=HEADINGS, strip_headers=False
        )

    def chunks(self, loaded: LoadedFile) -> Iterator[Chunk]:
        """Blocking, lazy and deterministic: the same file always gives the same chunks."""
        for part in loaded.parts():
            if loaded.markdown:
                for section in self.markdown.split_text(part.text):
                    path = " > ".join(
                        section.metadata[key] for _, key in HEADINGS if key in section.metadata
                    )
                    yield from self._cut(section.page_content, part.page, path)
            else:
                yield from self._cut(part.text, part.page, "")

    def _cut(self, text: str, page: int | None, section: str) -> Iterator[Chunk]:
        for piece in self.recursive.split_text(text):
            if piece.strip():
                yield Chunk(piece, page, section)
