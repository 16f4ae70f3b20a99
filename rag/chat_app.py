"""The Chainlit chat: a thin layer of handlers over `rag.assistant` and `ingest`.

Run through `rag ui` (which starts the local model when no endpoint is set), or
directly with `chainlit run rag/chat_app.py`. Chainlit APIs used here were read
from chainlit 2.12's `callbacks.py` / `message.py`: side elements whose name
appears in the message text become clickable, which is how [n] links to a source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.input_widget import Select, Slider, Switch

from ingest.pipeline import UPLOADS_PREFIX, ingest_path
from rag.assistant import Assistant, open_assistant
from rag.chain import Answer, AnswerInterrupted, Condensed, Retrieved, Token
from rag.errors import RagError
from rag.retrieval import Hit, SearchOptions
from rag.settings import get_settings
from rag.uploads import store_upload
from rag.welcome import load_starters, render_welcome, write_welcome

log = logging.getLogger(__name__)
ALL_SOURCES = "All documents"

_stack = AsyncExitStack()
_assistant: Assistant | None = None
_lock = asyncio.Lock()


async def assistant() -> Assistant:
    """The process-wide assistant, opened on first use and retried after a failure.

    Opening it connects to Milvus; when Milvus is down the chat says so and the
    next message tries again, so the UI recovers without a restart.
    """
    global _assistant
    async with _lock:
        if _assistant is None:
            _assistant = await _stack.enter_async_context(open_assistant(get_settings()))
        return _assistant


async def refresh_welcome(helper: Assistant, sources: list[str] | None = None) -> None:
    """Render chainlit.md in the runtime app root with the collection's current contents."""
    from chainlit.config import APP_ROOT

    from rag.embeddings import embedding_identity

    if sources is None:
        sources = await _source_names(helper)
    models = (
        f"**{helper.llm_label}**; passages are found with the "
        f"**{embedding_identity(helper.services.settings)[0]}** embedding model"
    )
    text = render_welcome(helper.services.store.collection_name, models, sources)
    await asyncio.to_thread(write_welcome, Path(APP_ROOT), text)


@cl.on_app_startup
async def _startup() -> None:
    # Open Milvus and the models before the first visitor; if that fails the chat
    # reports it and retries on the next message.
    with contextlib.suppress(RagError):
        await refresh_welcome(await assistant())


@cl.on_app_shutdown
async def _shutdown() -> None:
    await _stack.aclose()


def _users() -> dict[str, str]:
    secret = get_settings().ui_users
    if secret is None:
        return {}
    pairs = (p.split(":", 1) for p in secret.get_secret_value().split(",") if ":" in p)
    return {user.strip(): password for user, password in pairs}


if _users():

    @cl.password_auth_callback
    def _login(username: str, password: str) -> cl.User | None:
        import hmac

        expected = _users().get(username)
        if expected is not None and hmac.compare_digest(expected, password):
            return cl.User(identifier=username, metadata={"provider": "password"})
        return None


@cl.set_starters
async def _starters(user: cl.User | None = None, language: str | None = None) -> list[cl.Starter]:
    return [cl.Starter(label=label, message=text) for label, text in load_starters()]


async def _source_names(helper: Assistant) -> list[str]:
    from ingest.records import stored_sources

    try:
        return sorted(await stored_sources(helper.services.store))
    except Exception:  # the filter list is a convenience; the chat works without it
        return []


@cl.on_chat_start
async def _start() -> None:
    cl.user_session.set("history", [])
    try:
        helper = await assistant()
    except RagError as error:
        await cl.Message(content=f"⚠️ {error}. I'll try again with your next message.").send()
        return
    cl.user_session.set("options", helper.default_options())
    await send_settings(helper)


async def send_settings(helper: Assistant, sources: list[str] | None = None) -> None:
    """The settings panel, with the current options and the documents to filter by."""
    options: SearchOptions = cl.user_session.get("options") or helper.default_options()
    if sources is None:
        sources = await _source_names(helper)
    chosen = options.sources[0] if options.sources else ALL_SOURCES
    await cl.ChatSettings(
        [
            Slider(id="k", label="Passages (top-k)", initial=options.k, min=1, max=12, step=1),
            Switch(id="mmr", label="Diversify passages (MMR)", initial=options.mmr),
            Select(id="source", label="Only this document", values=[ALL_SOURCES, *sources],
                   initial_value=chosen if chosen in sources else ALL_SOURCES),
        ]
    ).send()  # fmt: skip


@cl.on_settings_update
async def _settings(values: dict[str, Any]) -> None:
    options: SearchOptions = cl.user_session.get("options") or SearchOptions()
    source = values.get("source")
    cl.user_session.set(
        "options",
        replace(
            options,
            k=int(values.get("k", options.k)),
            mmr=bool(values.get("mmr", options.mmr)),
            sources=() if not source or source == ALL_SOURCES else (str(source),),
        ),
    )


async def _ingest_uploads(helper: Assistant, elements: list[Any]) -> None:
    settings = helper.services.settings
    async with cl.Step(name="Adding your files", type="tool") as step:
        lines = []
        for element in elements:
            if not getattr(element, "path", None):
                continue
            try:
                stored = await asyncio.to_thread(
                    store_upload,
                    Path(settings.upload_dir),
                    element.name,
                    Path(element.path),
                    int(settings.upload_max_mb * 1024 * 1024),
                )
                # Stored as uploads/<name>, which folder ingests never remove.
                report = await ingest_path(
                    stored, helper.services.store, settings, source_prefix=UPLOADS_PREFIX
                )
                outcome = report.outcomes[0] if report.outcomes else None
                if outcome and outcome.status == "failed":
                    lines.append(f"❌ {element.name}: {outcome.reason}")
                else:
                    count = report.chunks_written
                    noun = "passage" if count == 1 else "passages"
                    lines.append(f"✅ {stored.name}: {count} {noun} added")
            except RagError as error:
                lines.append(f"❌ {error}")
        step.output = "\n".join(lines) or "No files received."
    await cl.Message(content="\n".join(lines)).send()
    # One listing of the collection serves both the welcome page and the filter.
    sources = await _source_names(helper)
    await refresh_welcome(helper, sources)
    await send_settings(helper, sources)  # the new file joins the document filter


def _elements(hits: list[Hit]) -> tuple[str, list[cl.Text]]:
    names = [f"[{n}] {hit.label()}" for n, hit in enumerate(hits, 1)]
    elements = [
        cl.Text(name=name, content=hit.document.page_content, display="side")
        for name, hit in zip(names, hits, strict=True)
    ]
    return "\n".join(
        f"- {name} (score {h.score:.2f})" for name, h in zip(names, hits, strict=True)
    ), elements


@cl.on_message
async def _message(message: cl.Message) -> None:
    try:
        helper = await assistant()
    except RagError as error:
        await cl.Message(content=f"⚠️ {error}. Try again once it is back.").send()
        return
    if message.elements:
        await _ingest_uploads(helper, list(message.elements))
    question = message.content.strip()
    if not question:
        return
    # (message id, role, text); an edited question replaces its turn and everything after.
    turns: list[tuple[str, str, str]] = cl.user_session.get("history") or []
    ids = [turn[0] for turn in turns]
    if message.id in ids:
        turns = turns[: ids.index(message.id)]
    history = [(role, text) for _, role, text in turns]
    options: SearchOptions = cl.user_session.get("options") or helper.default_options()
    reply = cl.Message(content="")
    started = time.perf_counter()
    try:
        async with cl.Step(name="Retrieval", type="retrieval") as step:
            events = helper.chain.astream(question, history, options)
            async for event in events:
                if isinstance(event, Condensed):
                    step.input = event.question
                elif isinstance(event, Retrieved):
                    rows = [
                        f"{n}. {h.label()} — score {h.score:.3f}"
                        for n, h in enumerate(event.hits, 1)
                    ]
                    step.output = (
                        f"Stand-alone question: {step.input}\n\n" + "\n".join(rows)
                        + f"\n\n{event.seconds * 1000:.0f} ms"
                    )  # fmt: skip
                    break
        async for event in events:
            if isinstance(event, Token):
                await reply.stream_token(event.text)
            elif isinstance(event, Answer):
                listing, elements = _elements(event.hits)
                title = "Sources" if event.answered else "Closest passages"
                reply.content = (
                    f"{event.text}\n\n**{title}**\n{listing}" if event.hits else event.text
                )
                reply.elements = elements  # type: ignore[assignment]
                turns += [(message.id, "user", question), (message.id, "assistant", event.text)]
                cl.user_session.set("history", turns[-12:])
    except AnswerInterrupted as error:
        reply.content = f"{error.partial}\n\n⚠️ {error}"
    except RagError as error:
        reply.content = (reply.content + "\n\n" if reply.content else "") + f"⚠️ {error}"
    except Exception as error:  # never leave a question without a reply
        log.exception("unexpected error while answering")
        reply.content = f"⚠️ something went wrong ({type(error).__name__}); please try again."
    log.info("answered in %.2f s", time.perf_counter() - started)
    with contextlib.suppress(Exception):
        await reply.send()
