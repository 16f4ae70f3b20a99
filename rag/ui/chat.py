"""The Chainlit chat: a thin layer of handlers over `rag.app` and `ingest`.

Run through `rag ui` (which starts the local model when no endpoint is set), or
directly with `chainlit run rag/ui/chat.py`. Chainlit APIs used here were read
from chainlit 2.12's `callbacks.py` / `message.py`: side elements whose name
appears in the message text become clickable, which is how [n] links to a source.

With RAG_DATABASE_URL set (the default is a SQLite file), conversations and
feedback are kept by Chainlit's SQLAlchemy data layer (`rag.history`): signed-in
users see their past chats in the sidebar and can resume one with its memory.

Several people share one deployment: each session has an owner key, computed here on the
server (the signed-in user's identifier, or without login ``thread:<this chat's thread>``),
and every search runs as that viewer (`SearchOptions.viewer`), so a user finds the shared
documents and their own uploads, nothing else. The document filter only takes names that
viewer may see, and the welcome page, which every visitor shares, lists shared documents.

Where the Milvus holds more than one collection this app built (with this embedding model),
the settings panel's *Collection* select lists them with the number of documents this viewer
can see in each (the shared ones and their own uploads, from the catalog each store keeps:
counting rows would show passages, not documents), and the chat answers, filters and takes
uploads in the chosen one (`Assistant.chain_for`). The choice is a chat setting, so Chainlit
keeps it in the thread's metadata and a resumed chat answers from it again; a collection that
has gone since gets one line and the configured one instead. With one collection there is
nothing to choose and the panel is as before.

Why a settings select and not Chainlit chat profiles (one per collection, each with its own
description and starters): the issue asks for the choice in the settings, next to the other
search choices, and a profile picker would show even with nothing to compare. What profiles
would have given is read from chainlit 2.12's ``server.py``: the start screen's starters and
``chainlit.md`` come from ``GET /project/settings`` before any socket (so before the session
and its settings exist), and only a profile's own starters can differ per chat. So the start
screen shows the configured collection's starters (`rag.ui.welcome.starters_for`), the Readme
panel lists every collection, and choosing another one posts a message describing it with its
own starters as buttons that ask them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import chainlit as cl
from chainlit.data import get_data_layer
from chainlit.data.base import BaseDataLayer
from chainlit.input_widget import InputWidget, Select, Slider, Switch
from chainlit.session import WebsocketSession
from chainlit.types import ThreadDict
from starlette.datastructures import Headers

from ingest.uploads import add_upload, display_name
from rag.app import Assistant, open_assistant
from rag.auth import (
    AUTH_SECRET_VARIABLE,
    OAUTH_ALLOW_MISSING,
    allowed,
    auth_secret_problem,
    header_user,
    oauth_configured,
    parse_allow,
    verify,
)
from rag.chain import Answer, AnswerInterrupted, Condensed, RagChain, Retrieved, Token
from rag.choices import SEARCH_LABELS, SearchMode
from rag.config import get_settings
from rag.errors import CollectionNotFound, ConfigError, RagError
from rag.history import META_KEY, HistoryDataLayer, loads, turns_from_steps
from rag.retrieval import Hit, SearchOptions
from rag.store.schema import SHARED
from rag.ui.welcome import (
    count_documents,
    describe_search,
    render_welcome,
    starters_for,
    ui_origins,
    write_welcome,
)

if TYPE_CHECKING:
    from langchain_milvus import Milvus
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)
ALL_SOURCES = "All documents"
KEPT_TURNS = 12  # (question, answer) entries kept per session; the chain uses the last few
TINY_NOTE = (
    "\n\n_Answered by a tiny offline model: often wrong. Set RAG_LOCAL_LLM to a larger "
    "bundled model, or RAG_LLM_BASE_URL to an endpoint, for better answers._"
)

_stack = AsyncExitStack()
_assistant: Assistant | None = None
_lock = asyncio.Lock()
_background: set[asyncio.Task[Any]] = set()
_history_task: asyncio.Task[Any] | None = None
OWNER_KEY = "owner"  # the session's owner key in cl.user_session (server-side only)
COLLECTION_KEY = "collection"  # the chosen collection: a settings id and a user_session key
STARTER_ACTION = "ask_starter"  # the buttons under a chosen collection's description
STARTERS_WAIT = 10.0  # seconds the start screen waits for Milvus before showing file starters
LISTED_IN_CHAT = 10  # documents named in the message describing a chosen collection


def _allowed_origins() -> set[str]:
    """The origins of the config (`rag.ui.welcome.prepare_app_root` wrote them) plus the
    address this process really listens on, which `chainlit run` has put in the environment."""
    from chainlit.config import config

    return set(config.project.allow_origins) | set(ui_origins())


def _guard_socket_origins() -> None:
    """Refuse socket connections a browser opens from another site.

    Chainlit 2.12 gives ``allow_origins`` to its HTTP CORS middleware only and starts its
    socket.io server with ``cors_allowed_origins=[]`` (server.py), which turns engine.io's
    origin check off; browsers apply no CORS to WebSockets, so any page could otherwise
    drive a chat here. engine.io takes a callable (base_server._cors_allowed_origins): a
    request whose Origin it rejects gets a 400 before any handler runs, and a request
    without an Origin (not a browser) is not checked.
    """
    from chainlit.config import config
    from chainlit.server import sio

    if "*" in config.project.allow_origins:
        return
    allowed = _allowed_origins()
    sio.eio.cors_allowed_origins = lambda origin, *_: origin in allowed


_guard_socket_origins()


async def assistant() -> Assistant:
    """The process-wide assistant, opened on first use and retried after a failure.

    Opening it connects to Milvus; when Milvus is down the chat says so and the
    next message tries again, so the UI recovers without a restart. The welcome
    page is rendered whenever it opens, so it also recovers.
    """
    global _assistant
    async with _lock:
        if _assistant is None:
            helper = await _stack.enter_async_context(open_assistant(get_settings()))
            _assistant = helper
            # Everything loaded so far (models, clients, Chainlit) lives as long as the
            # process: moving it out of the collector's reach shortened the longest
            # event-loop stall at 50 concurrent chats from ~350 ms to ~70 ms
            # (bench/results/serving.md), and with it every chat's first token.
            gc.collect()
            gc.freeze()
            try:
                await refresh_welcome(helper)
            except Exception:  # the welcome page is a convenience; answering comes first
                log.exception("could not write the welcome page")
        return _assistant


def _serve_api() -> None:
    """With RAG_API_KEYS set, this process also serves the HTTP API (`rag.api`) at /v1.

    `rag serve` runs the API on its own, but a Milvus Lite file opens in one process
    only, so with the default store the chat's process is the one that can serve it; it
    shares this process' Assistant. Routes go in front of Chainlit's catch-all page route
    (`rag.api.routes.mount_api`). No keys, no API: the chat exposes nothing more.
    """
    if get_settings().api_keys is None:
        return
    from chainlit.server import app

    from rag.api.routes import mount_api

    mount_api(app, assistant)


_serve_api()


def _unreachable(error: RagError, then: str) -> str:
    return f"⚠️ I can't answer yet: {error}. {then}"


async def refresh_welcome(helper: Assistant) -> None:
    """Render chainlit.md in the runtime app root with the collection's shared contents.

    One page for every visitor, so it lists what everyone may see: nobody's uploads.
    """
    from chainlit.config import APP_ROOT

    from rag.embeddings import embedding_identity

    sources = await _source_names(helper.services.store, SHARED)
    others = [
        (choice.name, choice.documents)
        for choice in await collection_choices(helper, SHARED)
        if choice.name != helper.collection
    ]
    models = (
        f"**{helper.llm_label}**; passages are found with the "
        f"**{embedding_identity(helper.services.settings)[0]}** embedding model"
    )
    search = describe_search(helper.default_options().mode, helper.services.store.bm25_unavailable)
    text = render_welcome(helper.collection, models, sources, search, others)
    await asyncio.to_thread(write_welcome, Path(APP_ROOT), text)


async def _warm_up() -> None:
    # Open Milvus and the models before the first visitor; if that fails the chat
    # reports it and retries on the next message.
    with contextlib.suppress(RagError):
        await assistant()


def _remember(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    _background.add(task)  # a task nobody references can be garbage-collected mid-run
    task.add_done_callback(_background.discard)
    return task


@cl.on_app_startup
async def _startup() -> None:
    global _history_task
    # Awaited: the tables must exist before the first answer is saved (milliseconds when
    # the database is up; a few seconds of connect timeout when it is down).
    _history_task = _remember(asyncio.create_task(_history_ready()))
    await _history_task
    # In the background, so the UI answers at once even while Milvus is slow or down.
    _remember(asyncio.create_task(_warm_up()))


@cl.on_app_shutdown
async def _shutdown() -> None:
    for task in list(_background):
        task.cancel()
    await _stack.aclose()


_database_url = get_settings().database_url
if _database_url:

    @cl.data_layer
    def _data_layer() -> BaseDataLayer:
        return HistoryDataLayer(_database_url)


async def _history_ready() -> None:
    """Create the history tables once; if the database is down, say so and retry later."""
    layer = get_data_layer() if _database_url else None
    if not isinstance(layer, HistoryDataLayer) or layer.schema_ready:
        return
    try:
        await layer.ensure_schema()
    except RagError as error:
        log.error("%s; chat history is not saved until it is reachable", error)


def _retry_history() -> None:
    """If the tables could not be made at start, try again in the background (never waited on)."""
    global _history_task
    if _history_task is None or _history_task.done():
        _history_task = _remember(asyncio.create_task(_history_ready()))


# Settings validation has already refused a malformed RAG_UI_USERS, trusted header or OAuth
# allow list (rag.auth): what is empty here was not asked for, never a value that failed.
_SETTINGS = get_settings()
if _SETTINGS.login_enabled(os.environ) and (
    problem := auth_secret_problem(os.environ.get(AUTH_SECRET_VARIABLE))
):
    raise ConfigError(problem)

if _USERS := _SETTINGS.login_users:

    @cl.password_auth_callback
    def _login(username: str, password: str) -> cl.User | None:
        stored = _USERS.get(username)
        if stored is not None and verify(stored, password):
            return cl.User(identifier=username, metadata={"provider": "password"})
        return None


if _TRUSTED_HEADER := _SETTINGS.ui_trusted_header:

    @cl.header_auth_callback
    async def _header_login(headers: Headers) -> cl.User | None:
        """The user an authenticating proxy named (Chainlit's POST /auth/header)."""
        if name := header_user(headers.get(_TRUSTED_HEADER)):
            return cl.User(identifier=name, metadata={"provider": "header"})
        return None


if oauth_configured(os.environ):
    _ALLOW = parse_allow(_SETTINGS.ui_oauth_allow)
    if not _ALLOW:  # `rag ui` refuses this first; the app itself must not open either
        raise ConfigError(OAUTH_ALLOW_MISSING)

    @cl.oauth_callback
    async def _oauth_login(
        provider_id: str,
        token: str,
        raw_user_data: dict[str, str],
        default_user: cl.User,
        id_token: str | None = None,
    ) -> cl.User | None:
        """Chainlit's provider signed someone in; only RAG_UI_OAUTH_ALLOW may enter."""
        return default_user if allowed(default_user.identifier, _ALLOW) else None


@cl.set_starters
async def _starters(user: cl.User | None = None, language: str | None = None) -> list[cl.Starter]:
    """The configured collection's starters (a new chat starts there; see the docstring).

    Chainlit asks before the page opens its socket, which may be while Milvus is still
    opening: it waits a little, then offers what needs no Milvus (a starters file).
    """
    helper = _assistant
    if helper is None:
        with contextlib.suppress(TimeoutError, RagError):
            helper = await asyncio.wait_for(asyncio.shield(assistant()), STARTERS_WAIT)
    if helper is None:
        pairs = starters_for(get_settings().collection, [])
    else:
        shared = await _source_names(helper.services.store, SHARED)
        pairs = starters_for(helper.collection, shared)
    return [cl.Starter(label=label, message=text) for label, text in pairs]


async def _source_names(store: Milvus, viewer: str) -> list[str]:
    """The documents of ``store``'s collection ``viewer`` may see, from the catalog the
    process keeps."""
    from rag.store.catalog import source_names
    from rag.store.milvus import MILVUS_ERRORS

    try:
        return await source_names(store, viewer)
    except MILVUS_ERRORS:  # the filter list is a convenience; the chat works without it
        return []


class CollectionChoice(NamedTuple):
    """A collection the chat can answer from, as the settings panel offers it.

    A NamedTuple, not a dataclass: `chainlit run` executes this file without registering
    it in ``sys.modules`` (config.load_module), and the dataclass decorator looks its
    module up there to resolve string annotations.
    """

    name: str
    documents: int  # the viewer's: the shared documents and their own uploads

    @property
    def label(self) -> str:
        return f"{self.name} ({count_documents(self.documents)})"


def _answerable_collections(client: MilvusClient, model: str) -> list[str]:
    """Blocking: the collections this app built with embedding ``model``, by name.

    Read with the configured store's own client: `Assistant.collections` would open a new
    connection and count every collection's rows on each chat start, and only names and
    identities are needed here.
    """
    from rag.store.milvus import read_identity

    names = []
    for name in sorted(client.list_collections()):
        identity = read_identity(client, name)
        if identity is not None and identity.embedding_model == model:
            names.append(name)
    return names


async def collection_choices(helper: Assistant, viewer: str) -> list[CollectionChoice]:
    """The collections of this Milvus built by this app with this embedding model, with
    the documents ``viewer`` may see in each; the configured one is always among them.

    Counting documents opens each collection's store once per process (`chain_for` keeps
    it) and reads its cached catalog; a collection that fails to open is left out (logged).
    """
    from rag.embeddings import embedding_identity
    from rag.store.milvus import MILVUS_ERRORS

    model = embedding_identity(helper.services.settings)[0]
    try:
        names = await asyncio.to_thread(
            _answerable_collections, helper.services.store.client, model
        )
    except MILVUS_ERRORS as error:  # the choice is a convenience; the configured one answers
        log.warning("could not list the collections: %s", error)
        names = []
    if helper.collection not in names:
        names.insert(0, helper.collection)
    choices = []
    for name in names:
        try:
            chain = await helper.chain_for(name)
        except RagError as error:
            log.warning("collection %s is not offered: %s", name, error)
            continue
        choices.append(CollectionChoice(name, len(await _source_names(chain.store, viewer))))
    return choices


def _chosen(helper: Assistant) -> str:
    """The session's collection: the one chosen in the settings, else the configured one."""
    name = cl.user_session.get(COLLECTION_KEY)
    return name if isinstance(name, str) and name else helper.collection


def _choose(name: str) -> None:
    """Make ``name`` the session's collection, in the settings Chainlit keeps in the thread's
    metadata too (`WebsocketSession.to_persistable`), so a resumed chat starts there."""
    cl.user_session.set(COLLECTION_KEY, name)
    session = cl.context.session
    if isinstance(session, WebsocketSession):  # an HTTP session keeps no settings
        session.chat_settings[COLLECTION_KEY] = name


def gone_collection(name: str, instead: str) -> str:
    """The one line a chat whose collection has gone (or was never offered) gets."""
    return f"⚠️ There is no collection “{name}” to answer from; answering from “{instead}”."


async def _chain(helper: Assistant) -> RagChain:
    """The chain over the session's collection; if that has gone, the configured one's,
    after one line saying so.

    `chain_for` checks that a collection exists when it first opens it, and keeps it; one
    dropped since would only fail at the search, so another collection's existence is
    asked again (one quick call; if Milvus is down the question reports that itself).
    """
    from rag.store.milvus import MILVUS_ERRORS

    name = _chosen(helper)
    try:
        if name != helper.collection:
            with contextlib.suppress(*MILVUS_ERRORS):
                client = helper.services.store.client
                if not await asyncio.to_thread(client.has_collection, name):
                    raise CollectionNotFound(name)
        return await helper.chain_for(name)
    except CollectionNotFound:
        reason = gone_collection(name, helper.collection)
    except RagError as error:
        reason = f"⚠️ {error}; answering from “{helper.collection}”."
    _choose(helper.collection)
    options = cl.user_session.get("options")
    if isinstance(options, SearchOptions):  # its document filter named the other's documents
        cl.user_session.set("options", replace(options, sources=()))
    await cl.Message(content=reason).send()
    await send_settings(helper)
    return helper.chain


def _viewer() -> str:
    """This session's owner key, decided on the server once per session.

    The signed-in user's identifier; without login ``thread:<thread id>``. A thread id the
    client named (``thread_id_to_resume``: only a resume sends one) identifies nobody
    without a login, so such a session gets a fresh id instead of the one it claimed.
    """
    key = cl.user_session.get(OWNER_KEY)
    if isinstance(key, str) and key:
        return key
    user = cl.user_session.get("user")
    if user is not None and user.identifier:
        key = str(user.identifier)
    else:
        session = cl.context.session
        chosen_by_client = bool(getattr(session, "thread_id_to_resume", None))
        key = f"thread:{uuid.uuid4() if chosen_by_client else session.thread_id}"
    cl.user_session.set(OWNER_KEY, key)
    return key


async def _assistant_or_say_why() -> Assistant | None:
    """The shared assistant, or None after telling the user what is down."""
    try:
        return await assistant()
    except RagError as error:
        await cl.Message(
            content=_unreachable(error, "I'll try again with your next message.")
        ).send()
        return None


@cl.on_chat_start
async def _start() -> None:
    cl.user_session.set("history", [])
    _retry_history()
    helper = await _assistant_or_say_why()
    if helper is not None:
        await _ready_session(helper)


@cl.on_chat_resume
async def _resume(thread: ThreadDict) -> None:
    """Reopen a past conversation: its questions and answers become the chat's memory again."""
    turns = turns_from_steps(list(thread.get("steps") or []))
    cl.user_session.set("history", turns[-KEPT_TURNS:])
    helper = await _assistant_or_say_why()
    if helper is not None:
        # Chainlit restored the thread's last chat settings into the session. They are
        # written when a chat disconnects, a write that can be lost (a SQLite database busy
        # with the answer's own writes), so the collection the last answer came from, kept
        # with it, stands in when they name none.
        values = dict(cl.context.session.chat_settings or {})
        if not values.get(COLLECTION_KEY) and (answered := answered_from(thread)):
            values[COLLECTION_KEY] = answered
        await _ready_session(helper, values)


def answered_from(thread: ThreadDict) -> str | None:
    """The collection the thread's last answer came from (its stored record), if any."""
    for step in reversed(list(thread.get("steps") or [])):
        record = loads(step.get("metadata")).get(META_KEY)
        if isinstance(record, dict) and isinstance(record.get("collection"), str):
            return str(record["collection"])
    return None


async def _ready_session(helper: Assistant, values: dict[str, Any] | None = None) -> None:
    """Search options (defaults, or the given settings values: a resumed chat's, whose
    collection is checked to be still there) and the settings panel."""
    values = values or {}
    viewer = _viewer()
    choices = await collection_choices(helper, viewer)
    wanted = values.get(COLLECTION_KEY) or helper.collection
    if wanted not in [choice.name for choice in choices]:
        await cl.Message(content=gone_collection(str(wanted), helper.collection)).send()
        wanted = helper.collection
    _choose(str(wanted))
    chain = await _chain(helper)
    sources = await _source_names(chain.store, viewer)
    options = options_from(values, helper.default_options())
    cl.user_session.set("options", _known_sources_only(options, options, sources))
    await send_settings(helper, sources, choices)


def _known_sources_only(
    wanted: SearchOptions, current: SearchOptions, sources: list[str]
) -> SearchOptions:
    """``wanted``, unless it filters by a document not in ``sources``: then its other
    settings with ``current``'s filter (or none, if that one is unknown too)."""
    if all(source in sources for source in wanted.sources):
        return wanted
    kept = current.sources if all(s in sources for s in current.sources) else ()
    return replace(wanted, sources=kept)


# The settings panel shows labels and reads the mode back from the label chosen.
MODE_OF_LABEL: dict[str, SearchMode] = {label: mode for mode, label in SEARCH_LABELS.items()}


def settings_widgets(
    options: SearchOptions,
    sources: list[str],
    *,
    lexical: bool = True,
    collections: list[CollectionChoice] | None = None,
    collection: str | None = None,
) -> list[InputWidget]:
    """The chat settings panel; each widget's id is a key read by `options_from` (and
    ``collection`` by `_settings`).

    ``lexical`` is False where this Milvus has no BM25: only dense search is offered. The
    collection select (first) shows only when there are ``collections`` to choose between.
    """
    chosen = options.sources[0] if options.sources else ALL_SOURCES
    modes = [label for mode, label in SEARCH_LABELS.items() if lexical or mode == "dense"]
    current = SEARCH_LABELS.get(options.mode, modes[0])
    current = current if current in modes else modes[0]
    choose: list[InputWidget] = []
    if collections and len(collections) > 1:
        items = {choice.label: choice.name for choice in collections}
        current_collection = collection if collection in items.values() else collections[0].name
        choose.append(
            Select(id=COLLECTION_KEY, label="Collection", items=items,
                   initial_value=current_collection)
        )  # fmt: skip
    return [
        *choose,
        Slider(id="k", label="Passages (top-k)", initial=options.k, min=1, max=12, step=1),
        Switch(id="mmr", label="Diversify passages (MMR)", initial=options.mmr),
        Select(id="search", label="Search by", values=modes, initial_value=current),
        Select(id="source", label="Only this document", values=[ALL_SOURCES, *sources],
               initial_value=chosen if chosen in sources else ALL_SOURCES),
    ]  # fmt: skip


def options_from(values: dict[str, Any], options: SearchOptions) -> SearchOptions:
    """``options`` updated with the settings panel's values (missing keys keep theirs)."""
    source = values.get("source", options.sources[0] if options.sources else ALL_SOURCES)
    return replace(
        options,
        k=int(values.get("k", options.k)),
        mmr=bool(values.get("mmr", options.mmr)),
        mode=MODE_OF_LABEL.get(str(values.get("search")), options.mode),
        sources=() if not source or source == ALL_SOURCES else (str(source),),
    )


async def send_settings(
    helper: Assistant,
    sources: list[str] | None = None,
    choices: list[CollectionChoice] | None = None,
) -> None:
    """The settings panel, with the current options, the documents to filter by and the
    collections to choose from (each read again when not given)."""
    options: SearchOptions = cl.user_session.get("options") or helper.default_options()
    chain = await _chain(helper)
    if sources is None:
        sources = await _source_names(chain.store, _viewer())
    if choices is None:
        choices = await collection_choices(helper, _viewer())
    lexical = not chain.store.bm25_unavailable
    widgets = settings_widgets(
        options, sources, lexical=lexical, collections=choices, collection=_chosen(helper)
    )
    await cl.ChatSettings(widgets).send()


def refused_filter(name: str) -> str:
    """The one line a filter by a document this user may not see (or that is gone) gets."""
    return f"⚠️ There is no document “{name}” to filter by; the filter is unchanged."


def refused_collection(name: str, current: str) -> str:
    """The one line a choice of a collection that is not offered gets."""
    return f"⚠️ There is no collection “{name}” to answer from; still answering from “{current}”."


async def _switch_collection(helper: Assistant, name: str) -> bool:
    """Answer from ``name`` from now on, if it is offered; False (after one line) if not.

    The document filter starts again at all documents: it named the other collection's.
    """
    viewer, current = _viewer(), _chosen(helper)
    choices = await collection_choices(helper, viewer)
    chosen = next((choice for choice in choices if choice.name == name), None)
    if chosen is None:
        _choose(current)  # the panel and the stored settings keep the real choice
        await cl.Message(content=refused_collection(name, current)).send()
        await send_settings(helper, choices=choices)
        return False
    _choose(name)
    options: SearchOptions = cl.user_session.get("options") or helper.default_options()
    cl.user_session.set("options", replace(options, sources=()))
    chain = await _chain(helper)
    sources = await _source_names(chain.store, viewer)
    await send_settings(helper, sources, choices)
    shared = await _source_names(chain.store, SHARED)
    await describe_collection(chosen, sources, starters_for(name, shared))
    return True


async def describe_collection(
    choice: CollectionChoice, sources: list[str], starters: list[tuple[str, str]]
) -> None:
    """What the Readme panel says of the configured collection, for the chosen one: its
    documents, and its starters as buttons that ask them."""
    if sources:
        named = ", ".join(display_name(s) for s in sources[:LISTED_IN_CHAT])
        more = len(sources) - LISTED_IN_CHAT
        named += f" and {more} more" if more > 0 else ""
        text = f"📚 Now answering from **{choice.name}**, {count_documents(len(sources))}: {named}."
    else:
        text = f"📚 Now answering from **{choice.name}**, which holds no documents yet."
    actions = [
        cl.Action(name=STARTER_ACTION, payload={"question": question}, label=label)
        for label, question in starters
    ]
    if actions:
        text += " Try one of these:"
    await cl.Message(content=text, actions=actions).send()


@cl.action_callback(STARTER_ACTION)
async def _ask_starter(action: cl.Action) -> None:
    """A starter button under a collection's description: asked as if typed."""
    question = action.payload.get("question") if isinstance(action.payload, dict) else None
    if not isinstance(question, str) or not question.strip():
        return
    message = cl.Message(content=question.strip(), type="user_message", author="User")
    await message.send()
    await _message(message)


@cl.on_settings_update
async def _settings(values: dict[str, Any]) -> None:
    """Settings from the client: a collection is checked against those offered to this
    viewer, a document filter against the names this viewer may see (another user's upload
    is refused like a name that never existed)."""
    options: SearchOptions = cl.user_session.get("options") or SearchOptions()
    wanted_collection = values.get(COLLECTION_KEY)
    helper: Assistant | None = None
    if wanted_collection or options_from(values, options).sources:
        try:
            helper = await assistant()
        except RagError as error:
            await cl.Message(content=_unreachable(error, "Try again once it is back.")).send()
            return
    if helper is not None and wanted_collection and wanted_collection != _chosen(helper):
        values = {k: v for k, v in values.items() if k not in (COLLECTION_KEY, "source")}
        if await _switch_collection(helper, str(wanted_collection)):
            options = cl.user_session.get("options") or options
    wanted = options_from(values, options)
    if wanted.sources and helper is not None:
        chain = await _chain(helper)
        sources = await _source_names(chain.store, _viewer())
        checked = _known_sources_only(wanted, options, sources)
        if checked != wanted:
            await cl.Message(content=refused_filter(wanted.sources[0])).send()
        wanted = checked
    cl.user_session.set("options", wanted)


async def _ingest_uploads(helper: Assistant, store: Milvus, elements: list[Any]) -> None:
    """Each dropped file becomes this session's owner's (`ingest.uploads.add_upload`), in
    the collection the chat answers from (``store``), where the user will ask about it."""
    owner = _viewer()
    async with cl.Step(name="Adding your files", type="tool") as step:
        lines = [
            (
                await add_upload(
                    store,
                    helper.services.settings,
                    owner=owner,
                    name=str(element.name),
                    temp_path=Path(element.path),
                )
            ).line
            for element in elements
            if getattr(element, "path", None)
        ]
        step.output = "\n".join(lines) or "No files received."
    await cl.Message(content="\n".join(lines)).send()
    # The upload changed the collection, so the catalog is read again; the new file joins
    # this user's document filter (the shared welcome page does not list uploads).
    from rag.store.catalog import invalidate

    invalidate(store)
    await send_settings(helper)


def _label(hit: Hit) -> str:
    """A hit as the chat names it: uploads by the name they were given (`display_name`)."""
    name = display_name(hit.source)
    return f"{name}, page {hit.page}" if hit.page else name


def _elements(hits: list[Hit]) -> tuple[str, list[cl.Text]]:
    names = [f"[{n}] {_label(hit)}" for n, hit in enumerate(hits, 1)]
    elements = [
        cl.Text(name=name, content=hit.document.page_content, display="side")
        for name, hit in zip(names, hits, strict=True)
    ]
    return "\n".join(
        f"- {name} (score {h.score:.2f})" for name, h in zip(names, hits, strict=True)
    ), elements


def _answer_record(question_id: str, answer: Answer, collection: str) -> dict[str, Any]:
    """What the stored answer carries for resuming and `rag feedback`: the question, the
    answer without its sources listing, the sources with their passages, and the
    collection they came from."""
    data = answer.to_dict()
    return {
        "question_id": question_id,
        "collection": collection,
        "question": data["question"],
        "standalone": data["standalone_question"],
        "answer": data["answer"],
        "answered": data["answered"],
        "cited": data["cited"],
        "sources": data["sources"],
    }


@cl.on_message
async def _message(message: cl.Message) -> None:
    try:
        helper = await assistant()
    except RagError as error:
        await cl.Message(content=_unreachable(error, "Try again once it is back.")).send()
        return
    if not isinstance(cl.user_session.get("options"), SearchOptions):
        await _ready_session(helper)  # Milvus was down when the chat started
    chain = await _chain(helper)
    if message.elements:
        await _ingest_uploads(helper, chain.store, list(message.elements))
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
    # Who is asking is decided here, on every message, never by a value the client sent.
    options = replace(options, viewer=_viewer())
    reply = cl.Message(content="")
    started = time.perf_counter()
    try:
        # show_input=False: the output already shows the stand-alone question.
        async with cl.Step(name="Retrieval", type="retrieval", show_input=False) as step:
            events = chain.astream(question, history, options)
            async for event in events:
                if isinstance(event, Condensed):
                    step.input = event.question
                elif isinstance(event, Retrieved):
                    rows = [
                        f"{n}. {_label(h)} — score {h.score:.3f}"
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
                ) + (TINY_NOTE if helper.tiny and event.answered else "")
                reply.elements = elements  # type: ignore[assignment]
                record = _answer_record(message.id, event, chain.store.collection_name)
                reply.metadata = {META_KEY: record}
                turns += [(message.id, "user", question), (message.id, "assistant", event.text)]
                cl.user_session.set("history", turns[-KEPT_TURNS:])
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
