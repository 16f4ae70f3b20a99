"""`rag serve`'s own FastAPI app: the API's routes and one Assistant for the process.

The API runs as its own process on its own port (uvicorn) rather than inside the chat's
server for two reasons. Chainlit serves its single-page app with a catch-all
``GET /{full_path:path}`` route (chainlit/server.py) registered at import, which shadows
any route added to its app afterwards; and an API is scaled, restarted and exposed apart
from a chat UI (other clients, other limits, another proxy). One exception: a Milvus Lite
file can be opened by one process only, so with the default store `rag ui` and `rag serve`
cannot run at once. For that case `rag.api.routes.mount_api` puts the same routes in front
of the chat app's catch-all.

The Assistant is opened in the lifespan, once: it starts the bundled model when no
endpoint is configured, and everything it opened is closed when the server stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rag.api.errors import ApiError, from_validation_error
from rag.api.keys import ApiKeys
from rag.api.routes import api_router
from rag.app import Assistant, open_assistant
from rag.config import Settings

TITLE = "rag: answers from your documents, OpenAI-compatible"
_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error"}


def create_app(
    settings: Settings, *, anonymous: bool = False, assistant: Assistant | None = None
) -> FastAPI:
    """The API over ``settings``: keys from RAG_API_KEYS, or none when ``anonymous``.

    ``assistant``: one already open in the server's event loop (`rag serve` opens it
    before uvicorn starts, so a store or model that is down stops the start in one line);
    without it the lifespan opens one and closes it at shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if assistant is not None:
            app.state.assistant = assistant
            yield
            return
        async with open_assistant(settings) as opened:
            app.state.assistant = opened
            yield

    async def get_assistant() -> Assistant:
        opened: Assistant = app.state.assistant
        return opened

    app = FastAPI(title=TITLE, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    keys = None if anonymous else ApiKeys(settings.api_key_hashes)
    app.include_router(api_router(get_assistant, keys, anonymous=anonymous))

    # Paths and methods no route serves, in OpenAI's shape too (only in this app: a
    # mounted router leaves its host app's handlers alone).
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = _ERROR_TYPES.get(error.status_code, "invalid_request_error")
        code = "not_found" if error.status_code == 404 else None
        return ApiError(error.status_code, str(error.detail), kind, code).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return from_validation_error(error).response()

    return app
