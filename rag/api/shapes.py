"""Request bodies of the API, validated by pydantic (a bad body is a 400 naming its field).

The chat request is OpenAI's: what an OpenAI client sends is accepted, and the fields this
app has no use for (temperature, tools, n, …) are ignored rather than refused, so any
client library works unchanged. Sizes are bounded, because a caller's text ends up in a
prompt and an embedding request.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag.choices import SEARCH_MODES, SearchMode

MAX_MESSAGE_CHARS = 16_000
MAX_MESSAGES = 200
MAX_SOURCES = 100
MAX_K = 50
# A collection name as Milvus (and RAG_COLLECTION) spells it; anything else is no model.
COLLECTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"


class TextPart(BaseModel):
    """One part of a message's content list; only text parts are understood."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    @field_validator("content")
    @classmethod
    def _bounded(cls, value: str | list[TextPart] | None) -> str | list[TextPart] | None:
        if isinstance(value, str) and len(value) > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message holds at most {MAX_MESSAGE_CHARS} characters")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class SearchParams(BaseModel):
    """How passages are found; unset fields keep the configured defaults (RAG_TOP_K, …)."""

    model_config = ConfigDict(extra="ignore")

    k: int | None = Field(None, ge=1, le=MAX_K, description="How many passages.")
    mode: SearchMode | None = Field(None, description=f"One of {', '.join(SEARCH_MODES)}.")
    mmr: bool | None = Field(None, description="Diversify the passages (MMR).")
    sources: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        default_factory=list,
        max_length=MAX_SOURCES,
        description="Only search these stored files (as GET /v1/documents or a "
        "completion's sources name them); files the caller may not see match nothing.",
    )


class ChatRequest(SearchParams):
    """``POST /v1/chat/completions``: the model is a collection, the last message the
    question, and the user/assistant messages before it the conversation so far."""

    model: str = Field(min_length=1, max_length=255)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False


class SearchRequest(SearchParams):
    """``POST /v1/search``: retrieval alone, no model (the same options as `rag search`)."""

    query: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    model: str | None = Field(
        None, max_length=255, description="The collection (default: RAG_COLLECTION)."
    )
