"""Milvus filter expressions: the one place user text becomes part of an expression.

Expression templates (``filter_params``) need Milvus 2.5+, and the PyPI Milvus server is
2.3, so values are escaped here as literals instead. Every filter the project sends is
built by a function of this module (a test greps the code for any other), so no path,
name or id can end a literal early and change what a delete or a search matches.

Rows record who may see them (``owner``: ``rag.store.schema.SHARED`` or one owner key).
Searches AND ``visible_to(viewer)`` into their expression, so Milvus itself drops other
owners' rows, whatever else the expression says; clean-ups that must stay within one
owner's rows pass ``owner`` to the builders below.
"""

from __future__ import annotations

from collections.abc import Iterable

from rag.store.schema import SHARED


def quote(value: str) -> str:
    """A Milvus string literal for ``value``, escaped so user input can't end the literal."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def one_of(field: str, values: Iterable[str]) -> str:
    """``field in ["a", "b"]`` with every value escaped."""
    return f"{field} in [" + ", ".join(quote(str(v)) for v in values) + "]"


def all_of(*exprs: str | None) -> str:
    """Every non-empty expression ANDed, each in parentheses so none can widen another."""
    parts = [e for e in exprs if e]
    if len(parts) == 1:
        return parts[0]
    return " and ".join(f"({e})" for e in parts)


def owned_by(owner: str) -> str:
    """Rows of exactly one owner (``SHARED`` for the shared rows)."""
    return f"owner == {quote(owner)}"


def visible_to(viewer: str) -> str:
    """Rows ``viewer`` may see: the shared ones and, for an owner key, that owner's own."""
    if viewer == SHARED:
        return owned_by(SHARED)
    return one_of("owner", [SHARED, viewer])


def _within(expr: str, owner: str | None) -> str:
    """``expr`` limited to one owner's rows, or left as it is for ``owner=None``."""
    return expr if owner is None else all_of(expr, owned_by(owner))


def source_expr(source: str, owner: str | None = None) -> str:
    """Rows of one source file (of one owner, when given)."""
    return _within(f"source == {quote(source)}", owner)


def sources_expr(sources: Iterable[str], owner: str | None = None) -> str:
    """Rows of any of these source files (of one owner, when given)."""
    return _within(one_of("source", sources), owner)


def ids_expr(ids: Iterable[str], owner: str | None = None) -> str:
    """Rows with these primary keys (of one owner, when given)."""
    return _within(one_of("pk", ids), owner)


def version_expr(source: str, digest: str, *, same: bool, owner: str | None = None) -> str:
    """Rows of one source whose file hash is (``same``) or is not ``digest``."""
    op = "==" if same else "!="
    return _within(f"source == {quote(source)} and file_hash {op} {quote(digest)}", owner)


def first_chunks_expr(owner: str | None = None) -> str:
    """One row per stored file version: its first chunk (the catalog reads these)."""
    return _within("chunk_index == 0", owner)
