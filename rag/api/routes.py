"""The API's routes under ``/v1``, as one APIRouter that any FastAPI app can carry.

`api_router` takes how to get the process's Assistant, so the same routes serve in `rag
serve`'s own app (`rag.api.app`) and inside another app that already has an Assistant
(`mount_api`, for the chat's process: a Milvus Lite file opens in one process only).

Errors are turned into OpenAI's shape by the routes' own class (`OpenAIRoute`), not by the
app's exception handlers: a router mounted in someone else's app must not change how that
app reports its errors, and must not depend on it to report its own.

Ownership follows the chat: every search runs as the caller (`SearchOptions.viewer`), so a
key sees the shared documents and its own uploads, never another key's; uploads are stored
and deleted as the caller's (`ingest.uploads.add_upload`, `remove_sources(owner=)`).
"""

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from ingest.pipeline import UPLOADS_PREFIX
from ingest.uploads import (
    MB,
    UploadRejected,
    add_upload,
    checked_name,
    display_name,
    owner_folder,
)
from rag.api.answers import AnswerRun, conversation
from rag.api.errors import (
    ApiError,
    bad_request,
    forbidden,
    from_rag_error,
    from_validation_error,
    model_not_found,
    not_found,
    unauthorized,
)
from rag.api.keys import ANONYMOUS, ApiKeys, Caller, bearer_key
from rag.api.shapes import COLLECTION_PATTERN, ChatRequest, SearchParams, SearchRequest
from rag.app import Assistant
from rag.chain import RagChain, describe_retrieval_error
from rag.errors import RagError
from rag.retrieval import SearchOptions, effective_mode, retrieve
from rag.store.catalog import SourceInfo, invalidate, list_sources, remove_sources

log = logging.getLogger(__name__)

GetAssistant = Callable[[], Awaitable[Assistant]]
PREFIX = "/v1"
# The part of a multipart upload that is not the file: the model field and boundaries.
FORM_SLACK = 64 * 1024
_COLLECTION = re.compile(COLLECTION_PATTERN)


class OpenAIRoute(APIRoute):
    """A route whose failures are OpenAI-shaped errors, wherever the router is mounted.

    FastAPI parses the body and runs the dependencies inside the handler this returns
    (fastapi/routing.py ``get_request_handler``), so a bad body (RequestValidationError)
    and a refused key (ApiError from a dependency) are caught here too.

    That order also means a multipart body is received (spooled to disk by Starlette)
    before the key is checked, so a route with a ``body_limit`` refuses a declared
    Content-Length above it first, without reading the body.
    """

    body_limit: Callable[[], Awaitable[int]] | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                if self.body_limit is not None:
                    declared = request.headers.get("content-length", "")
                    limit = await self.body_limit()
                    if declared.isdigit() and int(declared) > limit + FORM_SLACK:
                        raise _too_large("the upload", int(declared), limit)
                return await handler(request)
            except ApiError as error:
                return error.response()
            except RequestValidationError as error:
                return from_validation_error(error).response()
            except RagError as error:
                return from_rag_error(error).response()

        return handle


def api_router(
    get_assistant: GetAssistant, keys: ApiKeys | None = None, *, anonymous: bool = False
) -> APIRouter:
    """The routes under ``/v1``.

    ``keys``: the API keys to accept; None reads RAG_API_KEYS from the assistant's settings
    on the first request. With no keys at all every request is refused (401), unless
    ``anonymous``: then anyone may ask and search the shared documents, and nobody may
    upload or delete (there is no owner to keep an upload private to).
    """
    router = APIRouter(prefix=PREFIX, route_class=OpenAIRoute)
    configured: list[ApiKeys] = [keys] if keys is not None else []

    async def assistant() -> Assistant:
        try:
            return await get_assistant()
        except RagError as error:
            raise from_rag_error(error) from error

    async def caller(
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        if anonymous:
            return ANONYMOUS
        if not configured:
            configured.append(ApiKeys((await assistant()).services.settings.api_key_hashes))
        accepted = configured[0]
        if not accepted.configured:
            raise unauthorized("This server accepts no API keys (RAG_API_KEYS is not set).")
        key = bearer_key(authorization)
        if key is None:
            raise unauthorized(
                "You didn't provide an API key: send it as 'Authorization: Bearer KEY'."
            )
        owner = await accepted.owner_of(key)
        if owner is None:
            raise unauthorized("Incorrect API key provided.")
        return Caller(owner)

    async def owner(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if who.anonymous:
            raise forbidden("Uploads need an API key: this server runs without keys (--no-auth).")
        return who

    CallerDep = Annotated[Caller, Depends(caller)]
    OwnerDep = Annotated[Caller, Depends(owner)]

    async def chain_for(helper: Assistant, model: str | None) -> RagChain:
        if model is not None and not _COLLECTION.fullmatch(model):
            raise model_not_found(model)
        try:
            return await helper.chain_for(model)
        except RagError as error:
            raise from_rag_error(error, model) from error

    def options(helper: Assistant, params: SearchParams, who: Caller) -> SearchOptions:
        """The configured search, the request's choices over it, and the caller as viewer
        (decided here from the key, never from the body)."""
        chosen = replace(
            helper.default_options(),
            **{"k": params.k} if params.k else {},
            **{"mode": params.mode} if params.mode else {},
            **{"mmr": params.mmr} if params.mmr is not None else {},
            sources=tuple(params.sources),
        )
        return replace(chosen, viewer=who.viewer)

    @router.get("/models")
    async def models(who: CallerDep) -> dict[str, Any]:
        """Every collection this app built: each one is a model to ask."""
        helper = await assistant()
        found = await helper.collections()
        return {"object": "list", "data": [_model(c.name, c.rows) for c in found if c.identity]}

    @router.get("/models/{model}")
    async def model(model: str, who: CallerDep) -> dict[str, Any]:
        helper = await assistant()
        for found in await helper.collections():
            if found.name == model and found.identity:
                return _model(found.name, found.rows)
        raise model_not_found(model)

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, who: CallerDep) -> Response | dict[str, Any]:
        """An answer from the collection named by ``model``, with its sources."""
        question, history = conversation(body.messages)
        helper = await assistant()
        chain = await chain_for(helper, body.model)
        run = await AnswerRun.start(
            chain, body.model, question, history, options(helper, body, who)
        )
        if not body.stream:
            return await run.completion()
        return StreamingResponse(
            run.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post("/search")
    async def search(body: SearchRequest, who: CallerDep) -> dict[str, Any]:
        """The passages closest to a query, as `rag search` finds them (no model)."""
        helper = await assistant()
        chain = await chain_for(helper, body.model)
        chosen = replace(options(helper, body, who), mmr=body.mmr or False)
        try:
            hits = await retrieve(chain.store, body.query, chosen)
        except RagError as error:
            raise from_rag_error(error, body.model) from error
        except Exception as error:
            raise from_rag_error(describe_retrieval_error(error, chain.services)) from error
        return {
            "object": "list",
            "model": chain.store.collection_name,
            "mode": effective_mode(chain.store, chosen.mode),
            "data": [
                {
                    "n": n,
                    "source": hit.source,
                    "name": display_name(hit.source),
                    "page": hit.page,
                    "score": round(hit.score, 4),
                    "text": hit.document.page_content,
                }
                for n, hit in enumerate(hits, 1)
            ],
        }

    @router.post("/documents", status_code=201)
    async def upload(
        who: OwnerDep,
        file: Annotated[UploadFile, File(description="A document (.pdf, .md, .txt, …).")],
        model: Annotated[str | None, Form(max_length=255)] = None,
    ) -> dict[str, Any]:
        """Add a document only the caller will find (stored and searched as its owner's)."""
        helper = await assistant()
        settings = helper.services.settings
        limit = await upload_limit()
        name = file.filename or "upload"
        if file.size is not None and file.size > limit:
            raise _too_large(name, file.size, limit)
        chain = await chain_for(helper, model)
        with _saved(file) as temp_path:
            try:  # refusals (type, size) are the caller's to fix: a 400, not a failure
                await asyncio.to_thread(checked_name, name, temp_path, limit)
            except UploadRejected as error:
                raise bad_request(str(error), "file", "upload_rejected") from None
            result = await add_upload(
                chain.store, settings, owner=who.owner, name=name, temp_path=temp_path
            )
        invalidate(chain.store)
        if result.error is not None:  # Milvus or the embedding endpoint: 503/502, retryable
            raise from_rag_error(result.error, chain.store.collection_name)
        if result.problem is not None:  # this file could not be read: the caller's to fix
            raise ApiError(422, result.problem, "invalid_request_error", "upload_failed")
        return {
            "object": "document",
            "id": _document_id(result.source, who.owner),
            "name": result.name,
            "source": result.source,
            "passages": result.passages,
            "unchanged": result.unchanged,
            "model": chain.store.collection_name,
        }

    async def upload_limit() -> int:
        return int((await assistant()).services.settings.upload_max_mb * MB)

    for route in router.routes:
        if isinstance(route, OpenAIRoute) and route.endpoint is upload:
            route.body_limit = upload_limit

    @router.get("/documents")
    async def documents(
        who: OwnerDep, model: Annotated[str | None, Query(max_length=255)] = None
    ) -> dict[str, Any]:
        """The caller's own documents (shared ones are not listed: nobody may delete them)."""
        chain = await chain_for(await assistant(), model)
        listed = await list_sources(chain.store, owner=who.owner)
        return {"object": "list", "data": [_document(info, who.owner) for info in listed]}

    @router.delete("/documents/{document_id:path}")
    async def delete(
        document_id: str,
        who: OwnerDep,
        model: Annotated[str | None, Query(max_length=255)] = None,
    ) -> dict[str, Any]:
        """Remove one of the caller's documents; another key's is as unknown as a typo."""
        chain = await chain_for(await assistant(), model)
        listed = await list_sources(chain.store, owner=who.owner)
        found = [info for info in listed if _document_id(info.source, who.owner) == document_id]
        if not found:
            raise not_found(f"No document {document_id!r} of yours.", "document_not_found")
        removal = await remove_sources(chain.store, [found[0].source], owner=who.owner)
        return {
            "object": "document.deleted",
            "id": document_id,
            "deleted": True,
            "passages": removal.rows,
        }

    return router


def _model(name: str, rows: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "rag", "rows": rows}


def _document_id(source: str, owner: str) -> str:
    """A document's id: its stored name within the owner's upload folder (the content
    digest and the name it was given), or the whole source for rows ingested otherwise."""
    return source.removeprefix(f"{UPLOADS_PREFIX}{owner_folder(owner)}/")


def _document(info: SourceInfo, owner: str) -> dict[str, Any]:
    return {
        "object": "document",
        "id": _document_id(info.source, owner),
        "name": display_name(info.source),
        "source": info.source,
        "passages": info.chunks,
        "bytes": info.file_size,
        "ingested_at": info.ingested_at,
        "complete": info.complete,
    }


def _too_large(name: str, size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"{name}: {size / MB:.1f} MB is above the {limit / MB:g} MB upload limit",
        "invalid_request_error",
        "file_too_large",
        "file",
    )


@contextlib.contextmanager
def _saved(file: UploadFile) -> Any:
    """The upload as a file on disk (add_upload reads a path), removed afterwards."""
    handle, name = tempfile.mkstemp(prefix="rag-api-upload-")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            file.file.seek(0)
            while chunk := file.file.read(MB):
                out.write(chunk)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def mount_api(
    app: FastAPI,
    get_assistant: GetAssistant,
    keys: ApiKeys | None = None,
    *,
    anonymous: bool = False,
) -> None:
    """Serve the API's routes from an existing app, ahead of its catch-all route.

    Starlette tries routes in list order, and an app like Chainlit's ends with a
    ``GET /{full_path:path}`` that answers every path with its web page; routes added
    after it would never be reached. So the new routes are moved in front of the first
    catch-all (a route whose path ends in a ``:path`` parameter), keeping everything else
    in its order. FastAPI 0.165 adds an included router as one entry (``_IncludedRouter``,
    fastapi/routing.py) whose routes are resolved on use; older ones add each route. Either
    way what ``include_router`` appended is what is moved.
    """
    before = len(app.router.routes)
    app.include_router(api_router(get_assistant, keys, anonymous=anonymous))
    added = app.router.routes[before:]
    del app.router.routes[before:]
    at = next(
        (i for i, route in enumerate(app.router.routes) if _catch_all(route)),
        len(app.router.routes),
    )
    app.router.routes[at:at] = added


def _catch_all(route: BaseRoute) -> bool:
    """A route whose path ends in a ``:path`` parameter, or an included router holding one.

    Chainlit declares its routes, the catch-all last, on an APIRouter that it includes
    (chainlit/server.py); FastAPI 0.165 keeps that as one ``_IncludedRouter`` entry with no
    path of its own and the routes on its ``original_router``, so look inside it.
    """
    path = getattr(route, "path", None)
    if isinstance(path, str) and re.search(r"\{[^}]*:path\}$", path):
        return True
    inner = getattr(getattr(route, "original_router", None), "routes", ())
    return any(_catch_all(child) for child in inner)
