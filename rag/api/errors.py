"""Failures as the OpenAI API reports them, so an OpenAI client's retry logic just works.

The SDKs decide what to do by the status code alone (openai-python retries 408, 409, 429
and 5xx, honouring ``Retry-After``; it raises ``AuthenticationError`` for 401 and
``NotFoundError`` for 404), and show ``{"error": {"message", "type", "param", "code"}}``.
So each `rag.errors` type gets the status that tells a client the truth about it: Milvus
down is the server's own dependency (503, try again later), the model endpoint down is a
bad gateway (502), an upstream 429 is passed on as 429 with its ``Retry-After``, a
collection that does not exist is the unknown model it is to the caller (404).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openai
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rag.errors import (
    CollectionNotFound,
    ConfigError,
    EmbeddingMismatch,
    ModelUnavailable,
    RagError,
    StoreUnavailable,
)

RATE_LIMITED = 429


@dataclass
class ApiError(Exception):
    """One error response: its status, the OpenAI error object and any extra headers."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def unauthorized(message: str) -> ApiError:
    # OpenAI answers a wrong key with type invalid_request_error and code invalid_api_key.
    return ApiError(
        401,
        message,
        "invalid_request_error",
        "invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, "permission_error", "permission_denied")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def not_found(message: str, code: str | None = None) -> ApiError:
    return ApiError(404, message, "invalid_request_error", code)


def model_not_found(model: str) -> ApiError:
    return not_found(
        f"The model {model!r} does not exist: each collection is a model (GET /v1/models).",
        "model_not_found",
    )


def upstream_rate_limit(error: BaseException) -> openai.APIStatusError | None:
    """The upstream 429 behind an explained error: `rag.errors.explain` is raised ``from``
    the library's exception, so the openai error (with its response headers) is the cause."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, openai.APIStatusError) and current.status_code == RATE_LIMITED:
            return current
        current = current.__cause__ or current.__context__
    return None


def from_rag_error(error: RagError, model: str | None = None) -> ApiError:
    """The response for a failure the app has already explained in one line."""
    message = str(error)
    if (limited := upstream_rate_limit(error)) is not None:
        headers = {}
        if retry_after := limited.response.headers.get("retry-after"):
            headers["Retry-After"] = retry_after
        return ApiError(RATE_LIMITED, message, "requests", "rate_limit_exceeded", headers=headers)
    if isinstance(error, CollectionNotFound):
        return model_not_found(model) if model else not_found(message, "model_not_found")
    if isinstance(error, StoreUnavailable):
        return ApiError(503, message, "server_error", "store_unavailable")
    if isinstance(error, ModelUnavailable):  # AnswerInterrupted too: it is one
        return ApiError(502, message, "server_error", "model_unavailable")
    if isinstance(error, EmbeddingMismatch):
        # Permanent for this collection: a 4xx, so a client does not retry it.
        return bad_request(message, "model", "model_unusable")
    if isinstance(error, ConfigError):
        return ApiError(500, message, "server_error", "configuration")
    return ApiError(500, message, "server_error")


def from_validation_error(error: RequestValidationError) -> ApiError:
    """FastAPI's 422 list as OpenAI's 400: the first problem, named by its field."""
    problems = error.errors()
    if not problems:
        return bad_request("The request body is not valid.")
    first = problems[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value"))
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    where = f"{param}: " if param else ""
    return bad_request(f"{where}{message}{more}", param)
