"""The same ingestion against a Milvus *server* (milvus-lite server on loopback, over gRPC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import OpenEnv, by_source, write_files

pytestmark = pytest.mark.server

FOLDER = {
    "range.md": (
        "# Lelystad Range\n\n## Flags\n\nA red flag on the mast means flights are in progress; "
        "wait at the gate house.\n\n## Airspace\n\nThe reserved airspace is called EHR-QM1.\n"
    ),
    "canteen.txt": "Lunch in the Rotterdam canteen costs EUR 4.50 for employees.\n",
    "sub/dock.md": "# DockPost\n\nTighten the DockPost DP-7 anchor nuts to 40 Nm.\n",
}


async def test_ingest_rerun_and_search_on_a_server(
    open_env: OpenEnv, milvus_server: str, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", FOLDER)
    env = await open_env(milvus_uri=milvus_server, chunk_size=200, chunk_overlap=20)
    assert not env.settings.milvus_is_local

    first = await env.ingest(folder)
    assert first.ok
    assert {o.status for o in first.outcomes} == {"added"}
    assert set(by_source(first)) == set(FOLDER)
    assert await env.count() == first.chunks_written

    again = await env.ingest(folder)
    assert {o.status for o in again.outcomes} == {"unchanged"}
    assert again.chunks_written == 0
    assert await env.count() == first.chunks_written

    hits = await env.store.asimilarity_search_with_score(
        "What does a red flag on the mast mean?", k=2
    )
    top = hits[0][0]
    assert top.metadata["source"] == "range.md"
    assert "red flag" in top.page_content
    assert top.metadata["section"] == "Lelystad Range > Flags"


async def test_update_and_removal_on_a_server(
    open_env: OpenEnv, milvus_server: str, tmp_path: Path
) -> None:
    folder = write_files(tmp_path / "docs", FOLDER)
    env = await open_env(milvus_uri=milvus_server, chunk_size=200, chunk_overlap=20)
    await env.ingest(folder)

    (folder / "canteen.txt").write_text("Lunch now costs EUR 5.00.\n\nCoffee is free.\n")
    (folder / "sub" / "dock.md").unlink()
    report = await env.ingest(folder)
    outcomes = by_source(report)
    assert outcomes["canteen.txt"].status == "updated"
    assert outcomes["sub/dock.md"].status == "removed"
    assert outcomes["range.md"].status == "unchanged"
    rows = await env.rows('source == "canteen.txt"')
    # After the contextual header (the file's name as its title), the file's text.
    assert [r["text"] for r in rows] == ["canteen\n\nLunch now costs EUR 5.00.\n\nCoffee is free."]
    assert await env.count('source == "sub/dock.md"') == 0


async def test_server_clients_ping_no_faster_than_a_grpc_server_allows(
    open_env: OpenEnv, milvus_server: str
) -> None:
    """`milvus-lite server` keeps gRPC's ping policy (one ping without data per 5 min, two
    strikes); pymilvus' 10 s pings once got a 100k-chunk ingest GOAWAY "too_many_pings".
    Waiting minutes for a GOAWAY is no test, so this checks the channel options that both
    of the store's clients were built with, after the fixture's readiness check (pymilvus
    3 shares one connection per address: a client made earlier could impose its own)."""
    env = await open_env(milvus_uri=milvus_server)
    await env.count()  # the async client connects on first use
    for client in (env.store.client, env.store.aclient):
        options = client._handler._grpc_options  # pymilvus merges these over its defaults
        assert options.get("grpc.keepalive_time_ms", 10_000) >= 300_000, type(client).__name__
