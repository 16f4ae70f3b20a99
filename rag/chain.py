"""The retrieval chain: condense -> retrieve -> number the passages -> prompt -> stream.

``RagChain.astream`` runs the steps in order and yields an event per step, so the CLI and
the chat UI can show the stand-alone question and the hits before the first token, and
tokens as they arrive.

The prompt and the model are called directly (``ChatPromptTemplate.format_messages``, then
the chat model's own ``astream``) rather than as an LCEL ``prompt | llm | StrOutputParser()``
sequence: every chat costs this process CPU before its first token, and one GIL serves all
chats, so that CPU is the floor under time to first token at load (``bench/chat_cpu.py``).
Read in langchain-core 1.8 (runnables/base.py, ``RunnableSequence.astream`` and
``_atransform_stream_with_config``): the sequence sets up a callback manager and a run for
itself and for each of its three steps, merges their configs, and pipes every token through
``atee`` and the parser's transform; about a millisecond per chat, for a parent run nobody
listens to. The model's ``astream`` keeps what matters: its callbacks and tracing (a
LangSmith or OpenTelemetry handler still sees every model call), and its errors.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import openai

from rag.answer.context import trim
from rag.answer.extractive import extract
from rag.answer.grounding import DONT_SAY, check, left_out_note, passages_of, split_sentences
from rag.answer.policy import AnswerPolicy
from rag.answer.text import citations
from rag.errors import (
    HTTP_ERRORS,
    ModelUnavailable,
    RagError,
    Service,
    explain,
    first_line,
    mask,
)
from rag.retrieval import Hit, SearchOptions, retrieve

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage
    from langchain_milvus import Milvus

    from rag.prompts import Prompts

NOTHING_FOUND = (
    "I couldn't find anything about that in the documents. "
    "The closest passages are listed below; try rephrasing, or ask about another topic."
)
HISTORY_TURNS = 6  # older turns rarely help condense a follow-up and cost tokens


@dataclass(frozen=True)
class Condensed:
    question: str


@dataclass(frozen=True)
class Retrieved:
    hits: list[Hit]
    relevant: bool
    seconds: float


@dataclass(frozen=True)
class Token:
    text: str


@dataclass
class Answer:
    """The final result: text, the numbered passages it was given, and which it cited."""

    question: str
    standalone: str
    text: str
    hits: list[Hit] = field(default_factory=list)
    answered: bool = True
    draft: str | None = None  # the model's text before the grounding check changed it

    @property
    def cited(self) -> list[int]:
        # "[1]", "[1][2]" and "[1, 2]" all cite; numbers without a passage do not.
        return sorted(n for n in set(citations(self.text)) if 1 <= n <= len(self.hits))

    def to_dict(self) -> dict[str, object]:
        return {
            "question": self.question,
            "standalone_question": self.standalone,
            "answer": self.text,
            "answered": self.answered,
            "cited": self.cited,
            "sources": [
                {
                    "n": n,
                    "source": hit.source,
                    "page": hit.page,
                    "score": round(hit.score, 4),
                    "text": hit.document.page_content,
                }
                for n, hit in enumerate(self.hits, 1)
            ],
        }


Event = Condensed | Retrieved | Token | Answer


@dataclass
class _Verdict:
    """Filled in by the grounding check while it streams: did an answer survive it, and
    what had the model written (for `rag eval`, which scores both)?"""

    answered: bool = True
    draft: str | None = None


class AnswerInterrupted(ModelUnavailable):
    """The model stopped mid-answer; ``partial`` keeps what had arrived."""

    def __init__(self, message: str, partial: str) -> None:
        super().__init__(message)
        self.partial = partial


def _text(chunk: BaseMessage) -> str:
    """What ``StrOutputParser`` would make of a model's chunk: its text (langchain-core's
    ``BaseTransformOutputParser`` parses ``ChatGeneration(message=chunk).text``, which is
    ``chunk.text``: a string content as it is, else its text blocks joined)."""
    content = chunk.content
    return content if isinstance(content, str) else chunk.text


_STANDALONE_PREFIX = re.compile(r"^(stand-?alone( question)?|standalone)\s*:\s*", re.I)

# A line that opens with "[n]" looks like the start of a passage: inside a passage it is
# made "(n)", so a document cannot forge a passage of its own with another number or source.
_PASSAGE_HEADER = re.compile(r"^([ \t]*)\[(\d+)\]", re.MULTILINE)


def _inert(text: str) -> str:
    """Document text that can neither close the fence nor pose as another passage."""
    return _PASSAGE_HEADER.sub(r"\1(\2)", text.replace("</documents>", "</ documents>"))


def format_context(hits: Sequence[Hit], texts: Sequence[str] | None = None) -> str:
    """Numbered passages, fenced so the model can tell data from instructions.

    Passages are data: their text (and their file name, which is text too and may hold
    a newline) is neutralised so that the numbers the model sees are exactly ours.
    ``texts`` replaces the hits' own texts (trimmed passages, ``rag.answer.context``).
    """
    bodies = texts if texts is not None else [hit.document.page_content for hit in hits]
    blocks = []
    for number, (hit, body) in enumerate(zip(hits, bodies, strict=True), 1):
        label = _inert(" ".join(hit.label().split()))
        blocks.append(f"[{number}] (source: {label})\n{_inert(body)}")
    return "\n\n".join(blocks)


def _history_text(history: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"{role.capitalize()}: {text}" for role, text in history[-HISTORY_TURNS:])


@dataclass(frozen=True)
class OutsideServices:
    """The services a question calls, as a failure names them (`rag.errors.explain`)."""

    chat: Service
    embeddings: Service
    store: Service


def default_services(llm_name: str, secrets: Sequence[str]) -> OutsideServices:
    """Names for a chain built without settings: every key it holds counts as a secret."""
    keys = tuple(secrets)
    return OutsideServices(
        Service("chat", f"the chat model at {llm_name}", "RAG_LLM_API_KEY", keys),
        Service("embeddings", "the embedding model", "RAG_EMBEDDING_API_KEY", keys),
        Service("milvus", "Milvus", None, keys),
    )


# A search embeds the question (an OpenAI-compatible endpoint: openai over HTTP) and then
# asks Milvus; anything else that escapes it comes from the store's side.
_EMBEDDING_ERRORS = (openai.OpenAIError, *HTTP_ERRORS)


def describe_retrieval_error(error: BaseException, services: OutsideServices) -> RagError:
    """One line for a failed search: the embedding endpoint or Milvus, whichever it was."""
    failed = services.embeddings if isinstance(error, _EMBEDDING_ERRORS) else services.store
    return explain(error, failed)


class RagChain:
    """Answer questions from a Milvus store with any LangChain chat model."""

    def __init__(
        self,
        store: Milvus,
        llm: BaseChatModel,
        prompts: Prompts,
        *,
        relevance_floor: float,
        llm_name: str = "the chat model",
        policy: AnswerPolicy | None = None,
        services: OutsideServices | None = None,
    ) -> None:
        """``services`` names what failed in an error line (`rag.app` builds it from the
        settings); without it the names come from ``llm_name`` and the keys the models hold."""
        self.store = store
        self.policy = policy or AnswerPolicy()
        # Keys an endpoint might echo in an error: the chat model's and the embeddings'.
        self.secrets = tuple(
            key.get_secret_value()
            for key in (
                getattr(llm, "openai_api_key", None),
                getattr(getattr(store, "embeddings", None), "openai_api_key", None),
            )
            if hasattr(key, "get_secret_value") and key.get_secret_value()
        )
        self.relevance_floor = relevance_floor
        self.llm_name = llm_name
        self.services = services or default_services(llm_name, self.secrets)
        self.llm = llm
        self.prompts = prompts

    async def condense(self, question: str, history: Sequence[tuple[str, str]]) -> str:
        """A follow-up ("and who approves it?") made stand-alone; unchanged without history."""
        if not history:
            return question
        try:
            messages = self.prompts.condense.format_messages(
                chat_history=_history_text(history), question=question
            )
            text = _text(await self.llm.ainvoke(messages))
        except Exception as error:
            raise explain(error, self.services.chat) from error
        text = _STANDALONE_PREFIX.sub("", text.strip())
        text = text.strip().strip('"').strip()
        return text.splitlines()[0].strip() if text else question

    async def astream(
        self,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        options: SearchOptions | None = None,
    ) -> AsyncIterator[Event]:
        options = options or SearchOptions()
        standalone = await self.condense(question, history)
        yield Condensed(standalone)
        started = time.perf_counter()
        try:
            hits = await retrieve(self.store, standalone, options)
        except RagError:
            raise  # already one line (a closed store, a mismatched collection)
        except Exception as error:
            raise describe_retrieval_error(error, self.services) from error
        relevant_hits = [h for h in hits if h.score >= self.relevance_floor]
        yield Retrieved(hits, bool(relevant_hits), time.perf_counter() - started)
        if not relevant_hits:
            # Below the floor the model is not asked at all: a small model would invent.
            yield Token(NOTHING_FOUND)
            yield Answer(question, standalone, NOTHING_FOUND, hits, answered=False)
            return
        policy = self.policy
        texts = [hit.document.page_content for hit in relevant_hits]
        if policy.mode == "extract":
            quote = extract(standalone, texts, policy.min_quote_score)
            yield Token(quote or DONT_SAY)
            yield Answer(question, standalone, quote or DONT_SAY, relevant_hits, quote is not None)
            return
        context = format_context(relevant_hits, trim(standalone, texts, policy.context_chars))
        tokens = self._generate(context, standalone)
        verdict = _Verdict()
        if policy.check != "off":
            tokens = self._checked(tokens, passages_of(relevant_hits), standalone, texts, verdict)
        parts: list[str] = []
        async for token in tokens:
            parts.append(token)
            yield Token(token)
        text = "".join(parts).strip()
        yield Answer(question, standalone, text, relevant_hits, verdict.answered, verdict.draft)

    async def _generate(self, context: str, standalone: str) -> AsyncIterator[str]:
        """The model's answer as it streams; errors explained, a cut-off keeps its part."""
        parts: list[str] = []
        try:
            messages = self.prompts.answer.format_messages(context=context, question=standalone)
            async for chunk in self.llm.astream(messages):
                token = _text(chunk)
                if token:
                    parts.append(token)
                    yield token
        except Exception as error:
            if not parts:
                raise explain(error, self.services.chat) from error
            chat = self.services.chat
            why = f"{chat.label} stopped mid-answer: {first_line(error)} (the answer was cut off)"
            raise AnswerInterrupted(mask(why, chat.secrets), "".join(parts)) from error

    async def _checked(
        self,
        tokens: AsyncIterator[str],
        passages: list[str],
        standalone: str,
        texts: list[str],
        verdict: _Verdict,
    ) -> AsyncIterator[str]:
        """The answer sentence by sentence, each shown only once the passages back it.

        A reader never sees an invented sentence, even for a moment: the price is that text
        arrives a sentence at a time. ``check="mark"`` drops an unsupported sentence and says
        so at the end; ``"refuse"`` holds the whole answer and refuses if any sentence fails.
        When nothing that says anything is left, the reply is the refusal, or with
        ``mode="generate-or-extract"`` the best quote of the passages, if one is good enough.
        """
        policy = self.policy
        streaming = policy.check == "mark"
        pending = ""
        shown: list[str] = []
        held: list[str] = []  # the model's refusal or filler: shown only if nothing else is
        dropped = 0

        def take(text: str) -> list[str]:
            """Check complete sentences; the backed ones join ``shown`` and come back as the
            pieces to stream (each after a space, but the first)."""
            nonlocal dropped
            pieces = []
            for sentence in check(text, passages, policy.min_support, standalone).sentences:
                if not sentence.supported:
                    dropped += 1
                elif sentence.content:
                    pieces.append((" " if shown else "") + sentence.shown)
                    shown.append(sentence.shown)
                else:
                    held.append(sentence.text)
            return pieces if streaming else []

        written: list[str] = []
        async for token in tokens:
            written.append(token)
            pending += token
            spans = split_sentences(pending)
            # The last piece may still grow, and a citation may still follow a full stop.
            if len(spans) < 2 or spans[-1].text.lstrip().startswith("["):
                continue
            complete, pending = pending[: spans[-1].start], pending[spans[-1].start :]
            for piece in take(complete):
                yield piece
        verdict.draft = "".join(written)
        for piece in take(pending) if pending.strip() else []:
            yield piece
        if policy.check == "refuse" and dropped:
            shown = []
        if not shown:
            quote = None
            if policy.mode == "generate-or-extract":
                quote = extract(standalone, texts, policy.min_quote_score)
            verdict.answered = quote is not None
            yield quote or (" ".join(held) if held and not dropped else DONT_SAY)
            return
        if not streaming:
            yield " ".join(shown)
        if dropped:
            yield "\n\n" + left_out_note(dropped)

    async def ainvoke(
        self,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        options: SearchOptions | None = None,
    ) -> Answer:
        async for event in self.astream(question, history, options):
            if isinstance(event, Answer):
                return event
        raise AssertionError("the chain ended without an answer")
