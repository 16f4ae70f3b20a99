"""Milvus filter expressions: the one place user text becomes part of an expression.

Expression templates (``filter_params``) need Milvus 2.5+, and the PyPI Milvus server is
2.3, so values are escaped here as literals instead. Every filter the project sends is
built by a function of this module (a test greps the code for any other), so no path,
name or id can end a literal early and change what a delete or a search matches.
"""

from __future__ import annotations

from collections.abc import Iterable


def quote(value: str) -> str:
    """A Milvus string literal for ``value``, escaped so user input can't end the literal."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def one_of(field: str, values: Iterable[str]) -> str:
    """``field in ["a", "b"]`` with every value escaped."""
    return f"{field} in [" + ", ".join(quote(str(v)) for v in values) + "]"


def source_expr(source: str) -> str:
    """Rows of one source file."""
    return f"source == {quote(source)}"


def sources_expr(sources: Iterable[str]) -> str:
    """Rows of any of these source files."""
    return one_of("source", sources)


def ids_expr(ids: Iterable[str]) -> str:
    """Rows with these primary keys."""
    return one_of("pk", ids)


def version_expr(source: str, digest: str, *, same: bool) -> str:
    """Rows of one source whose file hash is (``same``) or is not ``digest``."""
    op = "==" if same else "!="
    return f"{source_expr(source)} and file_hash {op} {quote(digest)}"


def first_chunks_expr() -> str:
    """One row per stored file version: its first chunk (the catalog reads these)."""
    return "chunk_index == 0"
