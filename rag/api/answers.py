"""One question answered for the API: the chain's events as a chat completion or a stream.

The chain runs in a task of its own that hands its events over a queue. The route waits
for the first token before it answers, so whatever fails before any text exists (Milvus
down, the model endpoint down or rate-limited, an unknown collection) is still an HTTP
status a client can act on; once text has been sent the status is spent, and a failure
ends the stream with OpenAI's error event instead. Running the chain in its own task also
means the stream's body, which Starlette iterates in another task, never resumes the
chain's generator there (its HTTP clients hold context that belongs to one task), and a
client that goes away cancels the task, which closes the chain's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.uploads import display_name
from rag.api.errors import ApiError, bad_request, from_rag_error
from rag.api.shapes import ChatMessage
from rag.chain import Answer, Event, RagChain, Token
from rag.errors import RagError
from rag.retrieval import SearchOptions

log = logging.getLogger(__name__)
_END = object()  # the chain finished


def conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last message, a user's) and the history before it.

    The history is (role, text) turns of the user and assistant messages, as the chat
    keeps them (`RagChain.astream` condenses a follow-up with them). System and tool
    messages are left out: the app's own prompts say how to answer, and a caller's
    instructions do not reach them.
    """
    last = messages[-1]
    if last.role != "user":
        raise bad_request("The last message must be the user's question.", "messages")
    question = last.text.strip()
    if not question:
        raise bad_request("The question (the last user message) is empty.", "messages")
    history = [
        (message.role, message.text.strip())
        for message in messages[:-1]
        if message.role in ("user", "assistant") and message.text.strip()
    ]
    return question, history


def sources_of(answer: Answer) -> list[dict[str, Any]]:
    """The passages the answer was given, numbered as its [n] citations count them.

    `Answer.to_dict` gives file, page, score and passage; ``name`` is how the chat names
    the file (an upload by the name it was given) and ``cited`` says whether [n] appears.
    """
    cited = set(answer.cited)
    return [
        source | {"name": display_name(str(source["source"])), "cited": source["n"] in cited}
        for source in answer.to_dict()["sources"]  # type: ignore[union-attr]
    ]


def extras(answer: Answer) -> dict[str, Any]:
    """The fields a completion carries besides OpenAI's own."""
    return {"sources": sources_of(answer), "cited": answer.cited, "answered": answer.answered}


@dataclass
class AnswerRun:
    """The chain answering one question in its own task; events arrive on ``queue``."""

    model: str
    task: asyncio.Task[None] | None = None
    queue: asyncio.Queue[Event | BaseException | object] = field(default_factory=asyncio.Queue)
    first: list[Event] = field(default_factory=list)
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    async def start(
        cls,
        chain: RagChain,
        model: str,
        question: str,
        history: Sequence[tuple[str, str]],
        options: SearchOptions,
    ) -> AnswerRun:
        """Start answering and wait for the first text: a failure before it is an
        ApiError with the status that explains it."""
        run = cls(model)
        run.task = asyncio.create_task(run._produce(chain, question, history, options))
        try:
            while (item := await run._next()) is not None:
                run.first.append(item)
                if isinstance(item, Token | Answer):
                    break
        except BaseException:
            await run.cancel()
            raise
        return run

    async def _produce(
        self,
        chain: RagChain,
        question: str,
        history: Sequence[tuple[str, str]],
        options: SearchOptions,
    ) -> None:
        try:
            async for event in chain.astream(question, history, options):
                self.queue.put_nowait(event)
        except Exception as error:  # handed over: the route explains or logs it
            self.queue.put_nowait(error)
        else:
            self.queue.put_nowait(_END)

    def failure(self, error: BaseException) -> ApiError:
        if isinstance(error, RagError):
            return from_rag_error(error, self.model)
        log.error("unexpected error while answering", exc_info=error)
        return ApiError(500, f"internal error ({type(error).__name__})", "server_error")

    async def events(self) -> AsyncIterator[Event]:
        """Every event, the ones already received first; a failure raises ApiError."""
        for event in self.first:
            yield event
        if self.first and isinstance(self.first[-1], Answer):
            return
        while (item := await self._next()) is not None:
            yield item

    async def _next(self) -> Event | None:
        """The next event from the chain, None after the last; a failure raises ApiError."""
        item = await self.queue.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise self.failure(item)
        return item  # type: ignore[return-value]

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    # --- the two shapes of a reply ---------------------------------------------------------

    async def completion(self) -> dict[str, Any]:
        """``chat.completion``: the answer with its [n] citations, and its sources."""
        answer: Answer | None = None
        try:
            async for event in self.events():
                if isinstance(event, Answer):
                    answer = event
        finally:
            await self.cancel()
        if answer is None:
            raise ApiError(500, "the chain ended without an answer", "server_error")
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": None,
            **extras(answer),
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None, **more: Any) -> str:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **more,
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events as OpenAI streams them; the last chunk carries the sources."""
        try:
            yield self._chunk({"role": "assistant", "content": ""}, None)
            async for event in self.events():
                if isinstance(event, Token) and event.text:
                    yield self._chunk({"content": event.text}, None)
                elif isinstance(event, Answer):
                    yield self._chunk({}, "stop", **extras(event))
        except ApiError as error:
            # The status line has gone: OpenAI's clients raise on an error event.
            yield f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"
        finally:
            await self.cancel()
        yield "data: [DONE]\n\n"
