"""A scripted browser tab for a Chainlit 2.12 app: the real socket.io protocol, no mocks.

Chainlit ships no test client, so this speaks what its React client (``@chainlit/react-client``,
bundled in ``chainlit/frontend/dist``) speaks, as read from chainlit 2.12's ``socket.py``,
``emitter.py``, ``server.py`` and the bundled JS:

- socket.io at ``/ws/socket.io`` with ``auth = {clientType, sessionId, threadId, userEnv,
  chatProfile}``; ``sessionId`` is a UUID chosen by the client and names the session in HTTP
  calls (``/project/file``);
- once connected the client emits ``connection_successful``, which runs ``on_chat_start``;
- a user message is ``client_message`` with ``{"message": StepDict, "fileReferences": [...]}``
  where the step has a v4 UUID ``id``, ``type: "user_message"`` and the text in ``output``;
  files are first POSTed to ``/project/file?session_id=...`` (multipart field ``file``), which
  answers ``{"id": ...}``, and referenced as ``fileReferences: [{"id": ...}]``; an edit is
  ``edit_message`` with ``{"message": {"id", "output"}}``;
- ``on_message`` runs inside a ``run`` step named ``on_message`` whose ``parentId`` is the user
  message id, which is how a turn's events are told apart;
- the server answers with ``task_start`` .. ``task_end`` around ``on_message``; in between come
  ``new_message`` / ``update_message`` (messages and steps, as StepDicts), ``stream_start`` (the
  first token, carried in the StepDict's ``output``), ``stream_token`` (``{id, token}``) for every
  later token, and ``element`` (ElementDict with ``forId``; a Text element's content is not in
  the event but served by ``GET /project/file/{chainlitKey}?session_id=...``);
- ``ChatSettings.send()`` emits ``chat_settings`` with the list of input widgets; the client
  sends changes with ``chat_settings_change`` ({id: value}).

With login on, ``POST /login`` (form ``username``/``password``) sets the ``access_token``
cookie, which both the HTTP calls and the socket handshake (its ``Cookie`` header) carry. With
a data layer (chat history), ``auth.threadId`` names a thread to resume: the server answers
``connection_successful`` with ``first_interaction`` (``interaction: "resume"``), runs
``on_chat_resume`` and emits ``resume_thread`` with the ThreadDict; the sidebar lists threads
with ``POST /project/threads`` ({pagination: {first}, filter: {}}), opens one with
``GET /project/thread/{id}``, and thumbs up/down is ``PUT /feedback`` with ``{feedback: {forId,
value: 1 | 0, comment, threadId}, sessionId}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import socketio

SOCKET_PATH = "/ws/socket.io"
MESSAGE_EVENTS = ("new_message", "update_message")


@dataclass(frozen=True)
class Event:
    """One event from the server, stamped with its arrival (``time.monotonic()``)."""

    at: float
    name: str
    data: Any


@dataclass
class Turn:
    """Everything the server sent for one user message, up to its ``task_end``."""

    question: str
    message_id: str
    sent_at: float
    events: list[Event] = field(default_factory=list)

    def named(self, *names: str) -> list[Event]:
        return [e for e in self.events if e.name in names]

    def steps(self, step_type: str) -> list[dict[str, Any]]:
        """The latest version of every step of ``step_type`` (e.g. ``"retrieval"``)."""
        latest: dict[str, dict[str, Any]] = {}
        for event in self.named("new_message", "update_message"):
            if event.data.get("type") == step_type:
                latest[event.data["id"]] = event.data
        return list(latest.values())

    def assistant_messages(self) -> list[dict[str, Any]]:
        """The final version of each assistant message, in the order they first appeared."""
        latest: dict[str, dict[str, Any]] = {}
        for event in self.named("stream_start", "new_message", "update_message"):
            if event.data.get("type") == "assistant_message":
                latest[event.data["id"]] = event.data
        return list(latest.values())

    @property
    def answer(self) -> dict[str, Any]:
        """The message that was streamed (or, without a stream, the last assistant message)."""
        streamed = self.named("stream_start")
        messages = self.assistant_messages()
        assert messages, f"no assistant message for {self.question!r}: {self.summary()}"
        if streamed:
            wanted = streamed[0].data["id"]
            return next(m for m in messages if m["id"] == wanted)
        return messages[-1]

    def tokens(self) -> list[tuple[float, str]]:
        """(arrival, text) of every streamed token of the answer, the first one included."""
        answer_id = self.answer["id"]
        tokens = []
        for event in self.events:
            if event.name == "stream_start" and event.data["id"] == answer_id:
                tokens.append((event.at, event.data.get("output") or ""))
            elif event.name == "stream_token" and event.data["id"] == answer_id:
                tokens.append((event.at, event.data["token"]))
        return tokens

    def final_at(self) -> float:
        """When the answer's final (non-streaming) version arrived."""
        answer_id = self.answer["id"]
        finals = [
            e.at
            for e in self.named(*MESSAGE_EVENTS)
            if e.data.get("id") == answer_id and not e.data.get("streaming")
        ]
        assert finals, f"the answer was never completed: {self.summary()}"
        return finals[-1]

    def elements(self, for_id: str | None = None) -> list[dict[str, Any]]:
        wanted = for_id or self.answer["id"]
        return [e.data for e in self.named("element") if e.data.get("forId") == wanted]

    def summary(self) -> str:
        """A compact trace for assertion messages."""
        lines = []
        for e in self.events:
            data = e.data if isinstance(e.data, dict) else {"data": e.data}
            text = data.get("output") or data.get("token") or data.get("name") or ""
            lines.append(
                f"{e.at - self.sent_at:6.3f}s {e.name} {data.get('type', '')} {text!r:.80}"
            )
        return "\n" + "\n".join(lines)


class ChainlitClient:
    """One chat session: a socket.io connection plus the HTTP calls the web client makes."""

    def __init__(
        self,
        base_url: str,
        *,
        client_type: str = "webapp",
        cookies: dict[str, str] | None = None,
        thread_id: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_type = client_type
        self.cookies = dict(cookies or {})
        self.thread_id = thread_id
        self.session_id = str(uuid.uuid4())
        self.events: list[Event] = []
        self._arrived = asyncio.Event()
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._record)
        self._http: aiohttp.ClientSession | None = None

    async def _record(self, event: str, *args: Any) -> None:
        data = args[0] if len(args) == 1 else list(args) if args else None
        self.events.append(Event(time.monotonic(), event, data))
        self._arrived.set()

    async def __aenter__(self) -> ChainlitClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, limit: float = 15) -> None:
        """Open the socket as the web client does, then start the chat."""
        await self.sio.connect(
            self.base_url,
            socketio_path=SOCKET_PATH,
            transports=["websocket"],
            auth={
                "clientType": self.client_type,
                "sessionId": self.session_id,
                "threadId": self.thread_id,
                "userEnv": json.dumps({}),
                "chatProfile": "",
            },
            headers={"Cookie": self._cookie_header()} if self.cookies else {},
            wait_timeout=limit,
        )
        await self.sio.emit("connection_successful")

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.emit("clear_session")
            await self.sio.disconnect()
        if self._http is not None:
            await self._http.close()

    def _cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                base_url=self.base_url,
                timeout=aiohttp.ClientTimeout(total=30),
                headers={"Cookie": self._cookie_header()} if self.cookies else None,
            )
        return self._http

    async def resumed(self, limit: float = 30) -> dict[str, Any]:
        """The ThreadDict of ``resume_thread``, sent once ``on_chat_resume`` has run."""
        _, event = await self.wait_for("resume_thread", limit=limit)
        return dict(event.data)

    async def threads(self, first: int = 20) -> list[dict[str, Any]]:
        """The signed-in user's threads, newest first, as the sidebar lists them."""
        payload = {"pagination": {"first": first}, "filter": {}}
        async with self.http.post("/project/threads", json=payload) as response:
            assert response.status == 200, f"{response.status}: {await response.text()}"
            return list((await response.json())["data"])

    async def thread(self, thread_id: str) -> tuple[int, Any]:
        """(status, body) of ``GET /project/thread/{id}``, the thread with steps and elements."""
        async with self.http.get(f"/project/thread/{thread_id}") as response:
            body = await response.json() if response.status == 200 else await response.text()
            return response.status, body

    async def feedback(
        self, for_id: str, value: int, comment: str | None = None, thread_id: str | None = None
    ) -> str:
        """Thumbs up (1) or down (0) on a message, as the message's buttons do; returns its id."""
        feedback: dict[str, Any] = {"forId": for_id, "value": value, "comment": comment}
        if thread_id:
            feedback["threadId"] = thread_id
        payload = {"feedback": feedback, "sessionId": self.session_id}
        async with self.http.put("/feedback", json=payload) as response:
            assert response.status == 200, f"{response.status}: {await response.text()}"
            return str((await response.json())["feedbackId"])

    async def wait_for(
        self, name: str, *, after: int = 0, limit: float = 30, where: Any = None
    ) -> tuple[int, Event]:
        """The first event ``name`` at index >= ``after`` (matching ``where(data)``, if given)."""
        deadline = time.monotonic() + limit
        index = after
        while True:
            while index < len(self.events):
                event = self.events[index]
                if event.name == name and (where is None or where(event.data)):
                    return index, event
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e.name for e in self.events[after:]]
                raise TimeoutError(f"no {name!r} event within {limit}s; after #{after}: {seen}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def upload(self, path: Path, mime: str | None = None) -> dict[str, Any]:
        """POST a file as the composer's attach button does; returns ``{"id": ...}``."""
        form = aiohttp.FormData()
        form.add_field(
            "file",
            await asyncio.to_thread(path.read_bytes),
            filename=path.name,
            content_type=mime or mimetypes.guess_type(path.name)[0] or "text/plain",
        )
        async with self.http.post(
            "/project/file", params={"session_id": self.session_id}, data=form
        ) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())

    async def send(self, text: str, files: list[dict[str, Any]] | None = None) -> str:
        """Emit a user message exactly as the web client builds it; returns its id."""
        message = {
            "threadId": "",
            "id": str(uuid.uuid4()),
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "metadata": {"location": f"{self.base_url}/"},
        }
        references = [{"id": f["id"]} for f in files or []]
        await self.sio.emit("client_message", {"message": message, "fileReferences": references})
        return message["id"]

    async def ask(
        self, text: str, *, files: list[dict[str, Any]] | None = None, limit: float = 45
    ) -> Turn:
        """Send ``text`` and collect everything the server sent for it."""
        start, sent_at = len(self.events), time.monotonic()
        message_id = await self.send(text, files)
        return await self._turn(text, message_id, start, sent_at, limit)

    async def edit(self, message_id: str, text: str, *, limit: float = 45) -> Turn:
        """Edit an earlier user message (``edit_message``); Chainlit re-runs on_message for it."""
        start, sent_at = len(self.events), time.monotonic()
        await self.sio.emit("edit_message", {"message": {"id": message_id, "output": text}})
        return await self._turn(text, message_id, start, sent_at, limit)

    async def _turn(
        self, text: str, message_id: str, start: int, sent_at: float, limit: float
    ) -> Turn:
        """Events from ``start`` to the end of the on_message run for ``message_id``.

        ``task_start``/``task_end`` alone cannot tell turns apart (settings updates emit them
        too), so the turn is anchored on the ``on_message`` run step Chainlit opens with the
        user message as parent: the turn ends at the ``task_end`` after that step closes.
        """

        def opened(data: Any) -> bool:
            return (
                data.get("type") == "run"
                and data.get("name") == "on_message"
                and data.get("parentId") == message_id
            )

        begun, run = await self.wait_for("new_message", after=start, limit=limit, where=opened)
        closed, _ = await self.wait_for(
            "update_message",
            after=begun,
            limit=limit,
            where=lambda d: d["id"] == run.data["id"],
        )
        ended, _ = await self.wait_for("task_end", after=closed, limit=limit)
        return Turn(text, message_id, sent_at, self.events[start : ended + 1])

    async def change_settings(self, values: dict[str, Any], limit: float = 15) -> None:
        """Submit the settings panel; returns once ``on_settings_update`` has run."""
        start = len(self.events)
        await self.sio.emit("chat_settings_change", values)
        begun, _ = await self.wait_for("task_start", after=start, limit=limit)
        await self.wait_for("task_end", after=begun, limit=limit)

    async def element_content(self, element: dict[str, Any]) -> str:
        """What the web client shows for a Text element: the file behind its chainlitKey."""
        key = element["chainlitKey"]
        async with self.http.get(
            f"/project/file/{key}", params={"session_id": self.session_id}
        ) as response:
            assert response.status == 200, f"{element['name']}: {response.status}"
            return await response.text()


async def login(base_url: str, username: str, password: str) -> dict[str, str]:
    """Sign in with the password form; returns the auth cookies for ``ChainlitClient``."""
    async with (
        aiohttp.ClientSession(base_url=base_url.rstrip("/")) as http,
        http.post("/login", data={"username": username, "password": password}) as response,
    ):
        assert response.status == 200, f"login {username}: {response.status}"
        return {name: morsel.value for name, morsel in response.cookies.items()}
