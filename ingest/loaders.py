"""Turn a file into text parts (a PDF page, a block of a large text file).

Every function here blocks (file I/O, PDF parsing): the pipeline calls them
through ``asyncio.to_thread``. LangChain's community loaders would do the same
job but pull in langchain-community's large dependency tree, and we need control
they don't give: encoding detection with a clear message, streaming of huge text
files, headings kept as Markdown so the splitter can record sections, and a bounded
read of archives (a DOCX is a zip file: a small one can expand to gigabytes).
"""

from __future__ import annotations

import codecs
import io
import logging
import lzma
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

STREAM_THRESHOLD = 4 * 1024 * 1024  # text files above this are read block by block
BLOCK_SIZE = 1024 * 1024
SAMPLE_SIZE = 64 * 1024
MIB = 1024 * 1024

# What a zip-based document (DOCX) may expand to: 10 times the file-size limit, at least
# 16 MiB and never more than 256 MiB. Media in a DOCX is already compressed (it expands
# about 1:1) and its XML is a few MB even for hundreds of pages, so a real document
# expands to little more than its file size, except a small one: Word's styles alone
# expand to about 0.8 MB, 20 times a 40 kB file (hence the floor, harmless in memory).
# python-docx holds every part in memory and builds an lxml tree several times the XML's
# size, in the ingest and in the chat's process, so a few hundred MB is already the most
# one document should cost.
ARCHIVE_EXPANSION = 10
ARCHIVE_MIN_EXPANDED = 16 * MIB
ARCHIVE_MAX_EXPANDED = 256 * MIB
ARCHIVE_MAX_MEMBERS = 10_000  # a DOCX has tens of parts, thousands with many images
# Deflate cannot do better than about 1030:1, which is where zip bombs sit; machine-made
# documents of one repeated line reach about 275:1 (python-docx's XML, 40,000 times the
# same paragraph), so 500:1 refuses bombs and not documents. Below 1 MiB expanded, any
# ratio is harmless.
ARCHIVE_MAX_RATIO = 500
ARCHIVE_RATIO_FLOOR = MIB
ARCHIVE_READ_SIZE = MIB

logging.getLogger("pypdf").setLevel(logging.ERROR)


class LoadError(Exception):
    """A file that cannot be ingested; the message is the one-line reason."""


@dataclass(frozen=True)
class Part:
    """A piece of a document's text; ``page`` is 1-based for PDFs."""

    text: str
    page: int | None = None


@dataclass
class LoadedFile:
    """A loaded document. ``parts`` is a factory so huge files can be read twice lazily."""

    title: str
    markdown: bool
    parts: Callable[[], Iterator[Part]]
    notes: list[str] = field(default_factory=list)


def _detect_encoding(sample: bytes, path: Path) -> tuple[str, str | None]:
    """(codec, note): UTF-8 when it decodes, else the best guess of charset-normalizer."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", None
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", None
    if b"\x00" in sample:
        raise LoadError("binary content (NUL bytes) in a text file")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8", None
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(sample)
    best = matches.best()
    if best is None or best.encoding is None:
        raise LoadError("not valid UTF-8 and no other text encoding fits")
    encoding = best.encoding
    # On short Western text charset-normalizer ranks the single-byte Latin code pages
    # almost at random (French as cp1250, Dutch as cp1257: "crème" -> "crčme"). Windows-1252,
    # the usual legacy encoding (and a superset of Latin-1's letters), wins whenever it
    # fits at least as well; Cyrillic, Greek, CJK... never list it as a candidate.
    if any(
        "cp1252" in match.could_be_from_charset
        and match.chaos <= best.chaos + 0.1
        and match.coherence >= best.coherence
        for match in matches
    ):
        encoding = "cp1252"
    return encoding, f"not valid UTF-8; decoded as {encoding}"


def _read_text_blocks(path: Path, encoding: str) -> Iterator[Part]:
    """Decode a big file block by block, cutting at line ends so no word is split."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    pending = ""
    with path.open("rb") as handle:
        offset = 0
        for block in iter(lambda: handle.read(BLOCK_SIZE), b""):
            try:
                pending += decoder.decode(block)
            except UnicodeDecodeError as error:
                raise LoadError(f"invalid {encoding} near byte {offset + error.start}") from None
            offset += len(block)
            cut = pending.rfind("\n")
            if cut <= 0 and len(pending) >= BLOCK_SIZE:
                # No line end in a whole block (one huge line, old Mac "\r" line ends):
                # cut at the last space or CR, else anywhere, so memory stays bounded.
                cut = max(pending.rfind(" "), pending.rfind("\r"))
                if cut <= 0:
                    cut = len(pending) - 1
            if cut > 0:
                yield Part(pending[: cut + 1])
                pending = pending[cut + 1 :]
        pending += decoder.decode(b"", final=True)
    if pending:
        yield Part(pending)


def load_text(path: Path, markdown: bool) -> LoadedFile:
    size = path.stat().st_size
    with path.open("rb") as handle:
        sample = handle.read(SAMPLE_SIZE)
    encoding, note = _detect_encoding(sample, path)
    notes = [note] if note else []
    if size > STREAM_THRESHOLD:
        title = _markdown_title(sample.decode(encoding, errors="ignore")) if markdown else None
        return LoadedFile(
            title or path.stem, markdown, lambda: _read_text_blocks(path, encoding), notes
        )
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        raise LoadError(f"invalid {encoding} at byte {error.start}") from None
    title = _markdown_title(text) if markdown else None
    return LoadedFile(title or path.stem, markdown, lambda: iter([Part(text)]), notes)


def _markdown_title(text: str) -> str | None:
    match = re.search(r"^#\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
    return match.group(1) if match else None


def _clean_pdf_text(text: str) -> str:
    """Bullets drawn with symbol fonts come out as private-use code points (shown as
    boxes); make them plain bullets."""
    return re.sub("[\ue000-\uf8ff]", "•", text)


def load_pdf(path: Path) -> LoadedFile:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise LoadError("encrypted PDF (remove the password first)")
        pages = [
            Part(_clean_pdf_text(page.extract_text() or ""), page=i)
            for i, page in enumerate(reader.pages, 1)
        ]
        meta_title = (reader.metadata.title if reader.metadata else None) or None
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
        raise LoadError(f"corrupt or unreadable PDF ({error})") from None
    except Exception as error:  # damaged files also raise NotImplementedError, AttributeError...
        raise LoadError(f"corrupt or unreadable PDF ({type(error).__name__}: {error})") from None
    if not any(p.text.strip() for p in pages):
        raise LoadError("PDF has no extractable text (scanned images need OCR first)")
    return LoadedFile(str(meta_title or path.stem), False, lambda: iter(pages))


BLOCK_TAGS = ["p", "div", "br", "tr", "li", "dt", "dd", "pre", "blockquote", "section",
              "article", "table", "ul", "ol", "dl", "main", "aside", "figcaption"]  # fmt: skip


def load_html(path: Path) -> LoadedFile:
    from bs4 import BeautifulSoup

    data = path.read_bytes()
    if b"\x00" in data[:SAMPLE_SIZE] and not data.startswith(
        (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    ):
        raise LoadError("binary content (NUL bytes) in an HTML file")
    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "footer", "header", "template"]):
        tag.decompose()
    # Headings become Markdown so the splitter records the section of each chunk.
    for level in range(1, 7):
        for heading in soup.find_all(f"h{level}"):
            heading.replace_with(f"\n\n{'#' * level} {heading.get_text(' ', strip=True)}\n\n")
    for item in soup.find_all("li"):
        item.insert_before("\n- ")
    # Cells get a separator (as DOCX tables do): without it "<td>Wingspan</td><td>2.9 m</td>"
    # became "Wingspan2.9 m", one word that neither BM25 nor a reader could match.
    for row in soup.find_all("tr"):
        cells = row.find_all(["td", "th"], recursive=False)
        for cell in cells[:-1]:
            cell.append(" | ")
    # Line breaks only after block elements: get_text("\n") would also break lines
    # around inline tags ("founded in <b>2017</b> in Delft").
    for block in soup.find_all(BLOCK_TAGS):
        block.append("\n")
    body = soup.body or soup
    text = re.sub(r"\n\s*\n+", "\n\n", body.get_text())
    text = re.sub(r"[ \t]+", " ", text).strip()
    title = soup.title.get_text(strip=True) if soup.title else None
    return LoadedFile(title or _markdown_title(text) or path.stem, True, lambda: iter([Part(text)]))


def archive_limit(max_bytes: int) -> int:
    """The most a zip-based document under the file-size limit ``max_bytes`` may expand to."""
    return min(max(ARCHIVE_EXPANSION * max_bytes, ARCHIVE_MIN_EXPANDED), ARCHIVE_MAX_EXPANDED)


def _mb(size: int) -> str:
    return f"{size / MIB:.1f} MB"


def _member_name(member: zipfile.ZipInfo) -> str:
    """A member's name for a one-line message: repr() escapes any line break in it."""
    name = member.filename if len(member.filename) <= 80 else member.filename[:77] + "..."
    return repr(name)


def _check_declared_sizes(archive: zipfile.ZipFile, limit: int, kind: str) -> None:
    """Refuse an archive by what its central directory declares, before expanding anything."""
    members = archive.infolist()
    if len(members) > ARCHIVE_MAX_MEMBERS:
        raise LoadError(
            f"{kind} refused: {len(members)} archive members, more than {ARCHIVE_MAX_MEMBERS}"
        )
    total = sum(member.file_size for member in members)
    if total > limit:
        raise LoadError(
            f"{kind} refused: it would expand to {_mb(total)}, above the {_mb(limit)} a "
            f"document may expand to ({ARCHIVE_EXPANSION} x RAG_MAX_FILE_MB, within "
            f"{_mb(ARCHIVE_MIN_EXPANDED)} to {_mb(ARCHIVE_MAX_EXPANDED)})"
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > ARCHIVE_RATIO_FLOOR and ratio > ARCHIVE_MAX_RATIO:
            raise LoadError(
                f"{kind} refused: {_member_name(member)} would expand {ratio:.0f} times, "
                f"to {_mb(member.file_size)} (a zip bomb?)"
            )


def _copy_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, copy: zipfile.ZipFile, budget: int, kind: str
) -> int:
    """Copy one member, counting the bytes really read; return how many.

    zipfile's reader cuts a member at its declared ``file_size`` and fails its CRC at the
    end, but ``read()`` without a size asks zlib for up to 1 GiB in one call before cutting
    (ZipExtFile.read -> _read1(MAX_N)), which is what python-docx's ``ZipFile.read`` does:
    a member that declares less than it holds would be expanded whole first. Read in
    blocks, each decompression step yields at most one block; and counting the bytes
    against ``file_size`` and the budget keeps the bound without relying on that cut.
    """
    read = 0
    # A fresh ZipInfo: stored (no recompression), and the archive's own dates and flags,
    # which can be anything, stay out of it.
    with archive.open(member) as source, copy.open(zipfile.ZipInfo(member.filename), "w") as out:
        try:
            while block := source.read(ARCHIVE_READ_SIZE):
                read += len(block)
                if read > member.file_size or read > budget:
                    raise LoadError(
                        f"{kind} refused: {_member_name(member)} holds more than the "
                        f"{_mb(member.file_size)} it declares (a zip bomb?)"
                    )
                out.write(block)
        except zipfile.BadZipFile as error:
            # While reading, only the CRC check raises this, once the declared size is
            # read: the member was cut there, so it is damaged or holds more than it says.
            raise LoadError(
                f"{kind} refused: {_member_name(member)} does not match its declared size "
                f"and checksum, damaged or a zip bomb ({error})"
            ) from None
    return read


def read_archive_bounded(path: Path, limit: int, kind: str) -> io.BytesIO:
    """Blocking: the archive at ``path`` re-packed in memory, never expanding past ``limit``.

    The declared sizes are checked first (nothing is expanded for a bomb that declares
    itself); then every member is read in blocks and counted, because declared sizes can
    lie. The copy is stored uncompressed, so whatever parses it next (python-docx opens
    it with zipfile) reads exactly the bytes counted here, and a file replaced on disk in
    the meantime changes nothing.
    """
    # Opened outside the try: failing to open the file (permission, a folder) is load()'s
    # to explain; an OSError while reading the opened archive is about its content (a bad
    # offset to seek to, bz2's "Invalid data stream").
    with path.open("rb") as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                _check_declared_sizes(archive, limit, kind)
                buffer = io.BytesIO()
                total = 0
                with zipfile.ZipFile(buffer, "w") as copy:
                    for member in archive.infolist():
                        if not member.is_dir():
                            total += _copy_member(archive, member, copy, limit - total, kind)
        except LoadError:
            raise
        except RuntimeError as error:  # zipfile: "File ... is encrypted, password required"
            raise LoadError(f"encrypted or unreadable {kind} ({error})") from None
        except (
            zipfile.BadZipFile,
            zlib.error,
            lzma.LZMAError,
            EOFError,
            NotImplementedError,
            ValueError,
            OSError,
        ) as error:
            raise LoadError(
                f"corrupt or unreadable {kind} ({type(error).__name__}: {error})"
            ) from None
    buffer.seek(0)
    return buffer


def load_docx(path: Path, max_bytes: int) -> LoadedFile:
    """Load a DOCX whose expansion stays under ``archive_limit(max_bytes)``."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    package = read_archive_bounded(path, archive_limit(max_bytes), "DOCX")
    try:
        document = docx.Document(package)
    except (PackageNotFoundError, ValueError, KeyError, OSError) as error:
        raise LoadError(f"corrupt or unreadable DOCX ({error})") from None
    except Exception as error:  # zipfile.BadZipFile and lxml errors for damaged files
        raise LoadError(f"corrupt or unreadable DOCX ({type(error).__name__}: {error})") from None
    finally:
        package.close()
    from docx.table import Table

    lines: list[str] = []
    # In document order, so a table stays under its heading (and in that section's chunks).
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                lines.append(" | ".join(cell.text.strip() for cell in row.cells))
            continue
        text = block.text.strip()
        if not text:
            continue
        style = (block.style.name if block.style is not None else "") or ""
        level = re.match(r"Heading (\d)", style)
        if style == "Title":
            lines.append(f"# {text}")
        elif level:
            lines.append(f"{'#' * min(int(level.group(1)) + 1, 6)} {text}")
        else:
            lines.append(text)
    text = "\n\n".join(lines)
    title = document.core_properties.title or _markdown_title(text) or path.stem
    return LoadedFile(title, True, lambda: iter([Part(text)]))


# Each loader gets the path and the file-size limit (which bounds what an archive expands to).
LOADERS: dict[str, Callable[[Path, int], LoadedFile]] = {
    ".txt": lambda p, _: load_text(p, markdown=False),
    ".md": lambda p, _: load_text(p, markdown=True),
    ".markdown": lambda p, _: load_text(p, markdown=True),
    ".pdf": lambda p, _: load_pdf(p),
    ".html": lambda p, _: load_html(p),
    ".htm": lambda p, _: load_html(p),
    ".docx": load_docx,
}


def load(path: Path, max_bytes: int) -> LoadedFile:
    """Blocking: load any supported file, or raise LoadError with a one-line reason."""
    try:
        if not path.exists():
            raise LoadError("file disappeared or is a broken link")
        size = path.stat().st_size
        if size > max_bytes:
            mib = 1024 * 1024
            raise LoadError(
                f"{size / mib:.3g} MB is above the limit of {max_bytes / mib:.3g} MB "
                "(raise RAG_MAX_FILE_MB to allow it)"
            )
        loader = LOADERS.get(path.suffix.lower(), LOADERS[".txt"])
        return loader(path, max_bytes)
    except PermissionError:
        raise LoadError("permission denied") from None
    except IsADirectoryError:
        raise LoadError("is a folder, not a file") from None
    except OSError as error:
        raise LoadError(error.strerror or str(error)) from None
