"""`/v1/search` and `/v1/documents`: each key finds the shared documents and its own uploads,
and never another key's, whether it searches, asks, lists or deletes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.api.conftest import COLLECTION, RunningApi

HERON = b"# Birds\n\nThe grey heron nests in tall alder trees near the lake."


@pytest_asyncio.fixture(loop_scope="function")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=120) as client:
        yield client


async def search(
    http: httpx.AsyncClient, api: RunningApi, owner: str, query: str, **more: Any
) -> dict[str, Any]:
    response = await http.post(
        f"{api.base_url}/search", json={"query": query, **more}, headers=api.headers(owner)
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def upload(
    http: httpx.AsyncClient, api: RunningApi, owner: str, name: str, content: bytes
) -> httpx.Response:
    return await http.post(
        f"{api.base_url}/documents",
        files={"file": (name, content, "text/plain")},
        headers=api.headers(owner),
    )


async def listed(http: httpx.AsyncClient, api: RunningApi, owner: str) -> list[dict[str, Any]]:
    response = await http.get(f"{api.base_url}/documents", headers=api.headers(owner))
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def declared_upload(api: RunningApi, length: int) -> int:
    """The status of an upload that declares ``length`` bytes and sends none of them."""
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /v1/documents HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 60)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_search_finds_passages_with_the_search_options(
    http: httpx.AsyncClient, running_api: RunningApi
) -> None:
    found = await search(http, running_api, "alice", "anchor nuts torque", k=1, mode="dense")
    assert found["model"] == COLLECTION and found["mode"] == "dense"
    assert [hit["source"] for hit in found["data"]] == ["torque.md"]
    hit = found["data"][0]
    assert hit["n"] == 1 and "40 Nm" in hit["text"] and hit["page"] is None
    limited = await search(http, running_api, "alice", "anchor nuts", sources=["refunds.md"])
    assert {hit["source"] for hit in limited["data"]} == {"refunds.md"}
    response = await http.post(
        f"{running_api.base_url}/search",
        json={"query": "x", "mode": "sideways"},
        headers=running_api.headers("alice"),
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "mode"


async def test_an_upload_is_its_owners_alone(
    http: httpx.AsyncClient, running_api: RunningApi
) -> None:
    api = running_api
    response = await upload(http, api, "alice", "heron.txt", HERON)
    assert response.status_code == 201, response.text
    added = response.json()
    assert added["name"] == "heron.txt" and added["passages"] == 1 and not added["unchanged"]
    document_id = added["id"]
    assert document_id.endswith("-heron.txt") and "/" not in document_id

    try:
        # Searching: alice finds it, bob does not, even naming it; both find shared files.
        mine = await search(http, api, "alice", "grey heron nests", k=5)
        assert added["source"] in {hit["source"] for hit in mine["data"]}
        assert {"heron.txt (uploaded)"} <= {hit["name"] for hit in mine["data"]}
        theirs = await search(http, api, "bob", "grey heron nests", k=5)
        assert {hit["source"] for hit in theirs["data"]} == {"torque.md", "refunds.md"}
        named = await search(http, api, "bob", "heron", sources=[added["source"]])
        assert named["data"] == []

        # Asking: bob's answer cannot cite it either.
        question = [{"role": "user", "content": "Where do grey herons nest?"}]
        ask = {"model": COLLECTION, "messages": question}
        for owner, sees in (("alice", True), ("bob", False)):
            reply = await http.post(
                f"{api.base_url}/chat/completions", json=ask, headers=api.headers(owner)
            )
            sources = {s["source"] for s in reply.json()["sources"]}
            assert (added["source"] in sources) is sees, (owner, sources)

        # Listing: only one's own documents, never the shared ones.
        assert [d["id"] for d in await listed(http, api, "alice")] == [document_id]
        assert await listed(http, api, "bob") == []

        # Deleting: bob's attempt is a 404 like a typo, and leaves it in place.
        refused = await http.delete(
            f"{api.base_url}/documents/{document_id}", headers=api.headers("bob")
        )
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "document_not_found"
        assert [d["id"] for d in await listed(http, api, "alice")] == [document_id]
        # Shared documents are nobody's to delete through the API.
        shared = await http.delete(
            f"{api.base_url}/documents/torque.md", headers=api.headers("alice")
        )
        assert shared.status_code == 404
    finally:
        deleted = await http.delete(
            f"{api.base_url}/documents/{document_id}", headers=api.headers("alice")
        )
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "object": "document.deleted",
        "id": document_id,
        "deleted": True,
        "passages": 1,
    }
    assert await listed(http, api, "alice") == []
    after = await search(http, api, "alice", "grey heron nests", k=5)
    assert {hit["source"] for hit in after["data"]} == {"torque.md", "refunds.md"}


async def test_a_refused_upload_says_why(http: httpx.AsyncClient, running_api: RunningApi) -> None:
    wrong_type = await upload(http, running_api, "alice", "tool.exe", b"MZ\x90\x00")
    assert wrong_type.status_code == 400, wrong_type.text
    error = wrong_type.json()["error"]
    assert error["code"] == "upload_rejected" and "unsupported type .exe" in error["message"]
    too_big = running_api.settings.upload_max_mb * 1024 * 1024 + 1
    large = await upload(http, running_api, "alice", "big.txt", b"a" * int(too_big))
    assert large.status_code == 413 and large.json()["error"]["code"] == "file_too_large"
    # Refused by its declared length before any of the body is sent, even without a key:
    # the request line and headers alone get the answer.
    assert await declared_upload(running_api, int(too_big) * 2) == 413
    no_file = await http.post(
        f"{running_api.base_url}/documents", headers=running_api.headers("alice")
    )
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    assert await listed(http, running_api, "alice") == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/documents"), ("DELETE", "/documents/x")])
async def test_documents_need_a_key(
    http: httpx.AsyncClient, running_api: RunningApi, method: str, path: str
) -> None:
    response = await http.request(method, f"{running_api.base_url}{path}")
    assert response.status_code == 401
