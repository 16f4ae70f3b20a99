"""Filter expressions: hostile values survive quoting on a real Milvus Lite, and every
filter in the code is built by ``rag.store.filters``.

Milvus 2.3 has no expression templates, so a path or a name becomes a string literal in
an expression; if one could end that literal early, ``rag remove`` could delete, and a
document filter could search, rows the user never named.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient

from rag.store.filters import (
    all_of,
    first_chunks_expr,
    ids_expr,
    owned_by,
    quote,
    source_expr,
    sources_expr,
    version_expr,
    visible_to,
)
from rag.store.milvus import CollectionIdentity, ensure_collection
from rag.store.schema import (
    METADATA_FIELDS,
    PRIMARY_FIELD,
    SHARED,
    TEXT_FIELD,
    chunk_id,
)
from tests.conftest import REPO_ROOT
from tests.support.rows import chunk_row

HOSTILE = [
    'x" or source != "',
    "back\\slash",
    "ends with a backslash\\",
    '\\" or pk != "',
    "new\nline",
    "carriage\r\nreturn",
    "tab\there",
    "it's 'single'",
    "[brackets], (parens) and % _ like wildcards",
    "ünïcødé/日本語.md",
    "",
]
OTHERS = ["plain.md", "x", "back", "new", 'x"']
COLLECTION = "hostile"
OWNED = "owned"  # one row per (owner, source) pair, for the visibility filters
DIMENSION = 2
# Owner keys come from logins and thread ids: just as hostile as a file name.
OWNERS = [SHARED, "alice", "thread:abc", 'alice" or owner != "', "bob\\", "eve\n"]


def _row(source: str, digest: str = "h1", index: int = 0, owner: str = SHARED) -> dict[str, object]:
    return chunk_row(
        source, index, 2, vector=[1.0, 0.5], digest=digest, owner=owner, size=1, title="t",
        at="2025-01-01T00:00:00+00:00",
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    """A Milvus Lite collection holding one first and one second chunk per hostile name."""
    path = str(tmp_path_factory.mktemp("filters") / "filters.db")
    milvus = MilvusClient(uri=path)
    ensure_collection(milvus, COLLECTION, CollectionIdentity("test-model", DIMENSION))
    rows = [_row(s, index=i) for s in HOSTILE + OTHERS for i in (0, 1)]
    milvus.insert(COLLECTION, rows)
    ensure_collection(milvus, OWNED, CollectionIdentity("test-model", DIMENSION))
    milvus.insert(OWNED, [_owned(owner, source) for owner in OWNERS for source in OWNED_SOURCES])
    yield milvus
    milvus.close()
    server_manager_instance.release_server(path)


OWNED_SOURCES = ["same.md", 'x" or source != "']


def _owned(owner: str, source: str) -> dict[str, object]:
    row = _row(source, digest=f"h-{owner}", owner=owner)
    row[PRIMARY_FIELD] = chunk_id(f"{owner}\n{source}", "h1", 0)
    return row


def _owners(client: MilvusClient, expr: str) -> list[tuple[str, str]]:
    rows = client.query(OWNED, filter=expr, output_fields=["owner", "source"], limit=1000)
    return sorted((str(r["owner"]), str(r["source"])) for r in rows)


def _sources(client: MilvusClient, expr: str) -> list[str]:
    rows = client.query(COLLECTION, filter=expr, output_fields=["source"], limit=1000)
    return sorted(str(r["source"]) for r in rows)


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_hostile_source_is_found_and_nothing_else(client: MilvusClient, value: str) -> None:
    assert _sources(client, source_expr(value)) == [value, value]
    assert _sources(client, sources_expr([value])) == [value, value]
    assert _sources(client, version_expr(value, "h1", same=True)) == [value, value]
    assert _sources(client, version_expr(value, "h1", same=False)) == []
    assert _sources(client, ids_expr([chunk_id(value, "h1", 0)])) == [value]


def test_several_hostile_sources_in_one_expression(client: MilvusClient) -> None:
    picked = HOSTILE[:4]
    assert _sources(client, sources_expr(picked)) == sorted(picked * 2)
    every = _sources(client, "")
    assert len(every) == 2 * len(HOSTILE + OTHERS)


def test_first_chunks_are_one_row_per_file(client: MilvusClient) -> None:
    assert _sources(client, first_chunks_expr()) == sorted(HOSTILE + OTHERS)


@pytest.mark.parametrize("viewer", OWNERS, ids=repr)
def test_a_viewer_sees_the_shared_rows_and_its_own_only(client: MilvusClient, viewer: str) -> None:
    seen = {owner for owner, _source in _owners(client, visible_to(viewer))}
    assert seen == {SHARED, viewer}
    assert _owners(client, owned_by(viewer)) == [(viewer, s) for s in sorted(OWNED_SOURCES)]


@pytest.mark.parametrize("owner", OWNERS, ids=repr)
def test_owner_scoped_builders_stay_within_that_owner(client: MilvusClient, owner: str) -> None:
    source = OWNED_SOURCES[1]
    assert _owners(client, source_expr(source, owner)) == [(owner, source)]
    assert _owners(client, sources_expr(OWNED_SOURCES, owner)) == [
        (owner, s) for s in sorted(OWNED_SOURCES)
    ]
    assert _owners(client, version_expr(source, f"h-{owner}", same=True, owner=owner)) == [
        (owner, source)
    ]
    assert _owners(client, version_expr(source, f"h-{owner}", same=False, owner=owner)) == []
    assert len(_owners(client, first_chunks_expr(owner))) == len(OWNED_SOURCES)
    # Without an owner the same builders match every owner's rows, as before.
    assert len(_owners(client, source_expr(source))) == len(OWNERS)


def test_all_of_parenthesises_so_no_part_widens_another(client: MilvusClient) -> None:
    either = sources_expr(OWNED_SOURCES)
    assert _owners(client, all_of(visible_to("alice"), either, None)) == sorted(
        (o, s) for o in (SHARED, "alice") for s in OWNED_SOURCES
    )
    assert all_of(None, either) == either
    assert all_of() == ""


def test_quote_escapes_what_ends_a_literal() -> None:
    assert quote('a"b') == '"a\\"b"'
    assert quote("a\\") == '"a\\\\"'
    assert quote("a\nb") == '"a\\nb"'


# --- no filter is built anywhere else ------------------------------------------------------

FILTERS_MODULE = REPO_ROOT / "rag" / "store" / "filters.py"
SCANNED = [REPO_ROOT / "rag", REPO_ROOT / "ingest"]
FIELDS = [PRIMARY_FIELD, TEXT_FIELD, *METADATA_FIELDS]
# Text that only a Milvus expression contains: a comparison with a string literal, a
# list membership, or a schema field followed by a comparison operator.
EXPRESSION_TEXT = re.compile(
    r' == "| != "| in \[|\bpk in\b|\bsource ==|'
    rf"\b(?:{'|'.join(FIELDS)})\s*(?:==|!=|>=|<=|>|<|\bin\b|\blike\b)"
)
EXPRESSION_KEYWORDS = {"filter", "expr"}


def _literal_text(node: ast.AST) -> str:
    """The fixed text of a string-building expression (f-string parts, concatenated
    literals, a %-template or a ``.format`` template), or "" if it builds no string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal_text(part) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return _literal_text(node.left) + "\x00" + _literal_text(node.right)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
    ):
        return _literal_text(node.func.value)
    return ""


def _is_built(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr | ast.BinOp) or (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("format", "join")
    )


def built_filters(path: Path) -> Iterator[tuple[int, str]]:
    """(line, why) for each filter expression ``path`` builds itself."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if _is_built(node) and EXPRESSION_TEXT.search(_literal_text(node)):
            yield node.lineno, "builds expression text"
        if isinstance(node, ast.keyword) and node.arg in EXPRESSION_KEYWORDS:
            value = node.value
            literal = isinstance(value, ast.Constant) and value.value not in ("", None)
            if literal or _is_built(value):
                yield node.lineno, f"passes {node.arg}= a string made here"


def test_every_filter_is_built_by_the_filters_module() -> None:
    found = []
    for root in SCANNED:
        for path in sorted(root.rglob("*.py")):
            if path == FILTERS_MODULE:
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            for line, why in built_filters(path):
                where = path.relative_to(REPO_ROOT)
                found.append(f"{where}:{line}: {why}: {lines[line - 1].strip()}")
    assert not found, "filters built outside rag/store/filters.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("code", "hand_built"),
    [
        ('client.query(c, filter=f"source == {quote(s)}")', True),
        ("expr = 'pk in [' + ', '.join(ids) + ']'", True),
        ('expr = "chunk_index == %d" % n', True),
        ('expr = "file_hash != {}".format(h)', True),
        ("store.adelete(expr='source != \"\"')", True),
        ('client.query(c, filter="chunk_index == 0")', True),
        ('if mode == "dense":\n    pass', False),
        ("client.query(c, filter=source_expr(s))", False),
        ('client.query(c, filter="", output_fields=["count(*)"])', False),
        ('label = f"{name} in {folder}"', False),
    ],
)
def test_the_scan_catches_hand_built_filters_and_leaves_other_code_alone(
    tmp_path: Path, code: str, hand_built: bool
) -> None:
    module = tmp_path / "module.py"
    module.write_text(code + "\n", encoding="utf-8")
    assert bool(list(built_filters(module))) is hand_built, code
