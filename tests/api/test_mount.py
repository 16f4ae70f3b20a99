"""`mount_api`: the API's routes inside another app that ends with a catch-all GET route
(as Chainlit's does), for a process that already holds the Assistant and the Lite file.

The host app here is a plain FastAPI app whose ``GET /{full_path:path}`` answers every path
with a page, the way Chainlit serves its single-page app; the Assistant is opened in the
test's own loop and the app is called in-process through httpx's ASGI transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from milvus_lite.server_manager import server_manager_instance

from rag.api.keys import ApiKeys
from rag.api.routes import mount_api
from rag.app import Assistant, open_assistant
from rag.auth import mint_api_key
from tests.api.conftest import COLLECTION, api_settings, ingest_shared_here
from tests.support.fake_openai import FakeServer

PAGE = "<html>the chat</html>"
QUESTION = {"model": COLLECTION, "messages": [{"role": "user", "content": "Anchor nut torque?"}]}


@pytest.fixture(scope="module")
def carol() -> tuple[str, str]:
    """A key and its RAG_API_KEYS entry."""
    return mint_api_key("carol")


@pytest_asyncio.fixture(loop_scope="function")
async def assistant(
    tmp_path: Path, fake_openai: FakeServer, carol: tuple[str, str]
) -> AsyncIterator[Assistant]:
    """Opened in the test's loop, as the chat process holds its own."""
    settings = api_settings(str(tmp_path / "mount.db"), fake_openai, tmp_path, api_keys=carol[1])
    await ingest_shared_here(settings, tmp_path / "docs")
    async with open_assistant(settings) as opened:
        yield opened
    server_manager_instance.release_server(settings.milvus_uri)


def host_app() -> FastAPI:
    """A UI-like app: its own API route, then a catch-all that answers every GET, both on
    a router the app includes, as chainlit/server.py declares its routes."""
    app = FastAPI()
    router = APIRouter()

    @router.get("/project/settings")
    async def own() -> JSONResponse:
        return JSONResponse({"ui": True})

    @router.get("/{full_path:path}")
    async def spa(full_path: str) -> HTMLResponse:
        return HTMLResponse(PAGE)

    app.include_router(router)
    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://chat")


async def test_the_routes_go_before_the_catch_all(
    assistant: Assistant, carol: tuple[str, str]
) -> None:
    key = carol[0]
    app = host_app()
    before = list(app.router.routes)

    async def get_assistant() -> Assistant:
        return assistant

    mount_api(app, get_assistant)  # keys from the assistant's settings (RAG_API_KEYS)
    after = list(app.router.routes)
    assert after[-1] is before[-1]  # the catch-all stays last
    assert [r for r in after if r in before] == before  # the host's own order kept
    auth = {"Authorization": f"Bearer {key}"}
    async with client_for(app) as http:
        models = await http.get("/v1/models", headers=auth)
        assert models.status_code == 200, models.text
        assert [m["id"] for m in models.json()["data"]] == [COLLECTION]
        answer = await http.post("/v1/chat/completions", json=QUESTION, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["sources"][0]["source"] == "torque.md"
        # OpenAI-shaped errors without the host app's handlers; the host's routes unchanged.
        refused = await http.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        bad = await http.post("/v1/chat/completions", json={"model": COLLECTION}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
        assert (await http.get("/project/settings")).json() == {"ui": True}
        assert (await http.get("/some/page")).text == PAGE


async def test_mounted_without_keys_refuses_unless_anonymous(assistant: Assistant) -> None:
    async def get_assistant() -> Assistant:
        return assistant

    closed = host_app()
    mount_api(closed, get_assistant, ApiKeys({}))
    open_to_all = host_app()
    mount_api(open_to_all, get_assistant, anonymous=True)
    async with client_for(closed) as http:
        refused = await http.post("/v1/chat/completions", json=QUESTION)
        assert refused.status_code == 401
        assert "RAG_API_KEYS" in refused.json()["error"]["message"]
    async with client_for(open_to_all) as http:
        answered = await http.post("/v1/chat/completions", json=QUESTION)
        assert answered.status_code == 200, answered.text
        files = {"file": ("a.txt", b"text", "text/plain")}
        for response in (
            await http.get("/v1/documents"),
            await http.post("/v1/documents", files=files),
        ):
            assert response.status_code == 403
            assert response.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize("catch_all", [True, False])
async def test_mounting_orders_routes_and_calls_nothing(catch_all: bool) -> None:
    """The API answers ahead of a catch-all, or after the app's routes without one; the
    assistant is asked for only when a request needs it."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    if catch_all:

        @app.get("/{rest:path}")
        async def rest(rest: str) -> HTMLResponse:
            return HTMLResponse(PAGE)

    async def never() -> Assistant:
        raise AssertionError("the assistant is not needed to refuse a missing key")

    before = list(app.router.routes)
    mount_api(app, never, ApiKeys({"dave": ("$argon2id$unused",)}))
    assert len(app.router.routes) > len(before)
    assert (app.router.routes[-1] is before[-1]) is catch_all
    async with client_for(app) as http:
        refused = await http.get("/v1/models")
        assert refused.status_code == 401, refused.text
        assert (await http.get("/health")).json() == {"ok": True}
        if catch_all:
            assert (await http.get("/anything/else")).text == PAGE
