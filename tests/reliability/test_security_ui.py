"""The chat UI with a login, attacked the way a stranger on the network would: raw HTTP to
Chainlit's API routes and a raw socket.io connection without the auth cookie, a forged
cookie, a page on another site calling the app (a foreign Origin), hostile upload names,
uploads over the size limit or of the wrong type. Every secret the UI was given is then
looked for in its log.

One `rag ui` for the module (login on, every secret set), on a `milvus-lite server` so the
test can read what uploads stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import socketio

from ingest.uploads import owner_folder
from tests.reliability.conftest import RestartableMilvus, read_rows
from tests.support.chainlit_client import SOCKET_PATH, ChainlitClient, Turn, login
from tests.support.fake_openai import FakeServer, serve
from tests.ui.test_chat_ui import _env, ingested_ui

pytestmark = [pytest.mark.slow, pytest.mark.server]

SECRETS = {
    "RAG_LLM_API_KEY": "sk-llm-NEVER-SHOWN-1a2b",
    "RAG_EMBEDDING_API_KEY": "sk-emb-NEVER-SHOWN-3c4d",
    "RAG_MILVUS_TOKEN": "root:milvus-NEVER-SHOWN-5e6f",
    "CHAINLIT_AUTH_SECRET": "auth-secret-NEVER-SHOWN-" + "7" * 32,
}
PASSWORD = "pw-alice-NEVER-SHOWN-8g9h"
USERS = f"alice:{PASSWORD},bob:pw-bob-NEVER-SHOWN-0i1j"
UPLOAD_LIMIT_MB = 0.05
TRUSTED_ORIGIN = "https://chat.example.org"  # RAG_UI_ORIGINS: a proxy's public address
FOREIGN_ORIGIN = "http://evil.example"


@dataclass
class SecureUI:
    url: str
    root: Path
    log: Path
    fake: FakeServer
    milvus: RestartableMilvus


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureUI]:
    root = tmp_path_factory.mktemp("secure_ui")
    docs, cwd = root / "docs", root / "cwd"
    cwd.mkdir()
    docs.mkdir()
    (docs / "falcon.txt").write_text("The launch code for Project Falcon is ZX-4471.\n")
    milvus = RestartableMilvus(root / "milvus")
    milvus.start()
    try:
        with serve() as fake:
            env = (
                _env(root, fake.base_url)
                | SECRETS
                | {
                    "RAG_MILVUS_URI": milvus.uri,
                    "RAG_UI_USERS": USERS,
                    "RAG_UPLOAD_MAX_MB": str(UPLOAD_LIMIT_MB),
                    "RAG_UI_ORIGINS": TRUSTED_ORIGIN,
                }
            )
            with ingested_ui(docs, cwd, root, env, start_timeout=60) as (url, log):
                yield SecureUI(url, root, log, fake, milvus)
    finally:
        milvus.stop()


async def signed_in(ui: SecureUI) -> ChainlitClient:
    cookies = await login(ui.url, "alice", PASSWORD)
    client = ChainlitClient(ui.url, cookies=cookies)
    await client.connect(limit=30)
    await client.wait_for("chat_settings", limit=60)
    return client


# --------------------------------------------------------------------------------------------
# Nothing without signing in
# --------------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/user", {}),
    ("GET", "/project/settings", {}),
    ("POST", "/project/threads", {"json": {"pagination": {"first": 20}, "filter": {}}}),
    ("GET", "/project/thread/00000000-0000-0000-0000-000000000000", {}),
    ("PUT", "/project/thread", {"json": {"threadId": "x", "name": "pwned"}}),
    ("DELETE", "/project/thread", {"json": {"threadId": "x"}}),
    ("PUT", "/feedback", {"json": {"feedback": {"forId": "x", "value": 1}, "sessionId": "x"}}),
    ("DELETE", "/feedback", {"json": {"feedbackId": "x"}}),
    ("POST", "/project/action", {"json": {"sessionId": "x", "action": {}}}),
    ("PUT", "/project/element", {"json": {"sessionId": "x", "element": {}}}),
]


def forged_token(identifier: str) -> str:
    """A JWT for ``identifier`` signed with a wrong secret (HS256, Chainlit's algorithm)."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"identifier": identifier, "metadata": {}, "exp": int(time.time()) + 3600}
    body = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
    signature = hmac.new(b"not-the-secret", body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.mark.parametrize("cookies", [{}, {"access_token": "forged"}], ids=["none", "forged"])
def test_api_routes_refuse_requests_without_a_valid_login(
    ui: SecureUI, cookies: dict[str, str]
) -> None:
    if cookies:
        cookies = {"access_token": forged_token("alice")}
    with httpx.Client(base_url=ui.url, cookies=cookies, timeout=30) as http:
        for method, path, extra in ROUTES:
            response = http.request(method, path, **extra)
            assert response.status_code in (401, 403), (method, path, response.status_code)
            assert "alice" not in response.text and "ZX-4471" not in response.text


async def test_a_socket_without_the_auth_cookie_is_refused(ui: SecureUI) -> None:
    for cookie in ("", f"access_token={forged_token('alice')}"):
        sio = socketio.AsyncClient(reconnection=False)
        auth = {"clientType": "webapp", "sessionId": "s", "threadId": "", "userEnv": "{}",
                "chatProfile": ""}  # fmt: skip
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(
                ui.url,
                socketio_path=SOCKET_PATH,
                transports=["websocket"],
                auth=auth,
                headers={"Cookie": cookie} if cookie else {},
                wait_timeout=15,
            )
        assert not sio.connected
        await sio.disconnect()


async def test_a_live_session_cannot_be_used_by_someone_not_signed_in(ui: SecureUI) -> None:
    """Knowing a signed-in session's id is not enough to upload into it or read its files."""
    client = await signed_in(ui)
    try:
        turn = await client.ask("What is the launch code for Project Falcon?")
        element = turn.elements()[0]
        form = aiohttp.FormData()
        form.add_field("file", b"injected", filename="evil.txt", content_type="text/plain")
        async with aiohttp.ClientSession(base_url=ui.url) as stranger:
            async with stranger.post(
                "/project/file", params={"session_id": client.session_id}, data=form
            ) as response:
                assert response.status in (401, 403), response.status
            async with stranger.get(
                f"/project/file/{element['chainlitKey']}",
                params={"session_id": client.session_id},
            ) as response:
                assert response.status in (401, 403), response.status
                assert "ZX-4471" not in await response.text()
        # the owner still reads it
        assert "ZX-4471" in await client.element_content(element)
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------
# Nothing from another site's page
# --------------------------------------------------------------------------------------------


async def _socket_from(ui: SecureUI, cookies: dict[str, str], origin: str) -> bool:
    """Whether a signed-in socket whose handshake carries ``origin`` is let in."""
    sio = socketio.AsyncClient(reconnection=False)
    auth = {"clientType": "webapp", "sessionId": f"origin-{origin}", "threadId": "",
            "userEnv": "{}", "chatProfile": ""}  # fmt: skip
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    try:
        await sio.connect(
            ui.url,
            socketio_path=SOCKET_PATH,
            transports=["websocket"],
            auth=auth,
            headers={"Cookie": cookie, "Origin": origin},
            wait_timeout=15,
        )
    except socketio.exceptions.ConnectionError:
        return False
    connected = sio.connected
    await sio.disconnect()
    return connected


async def test_a_socket_opened_from_another_site_is_refused(ui: SecureUI) -> None:
    """A browser opens WebSockets across sites without CORS, carrying the login cookie:
    the app itself must refuse an Origin it does not know."""
    cookies = await login(ui.url, "alice", PASSWORD)
    assert not await _socket_from(ui, cookies, FOREIGN_ORIGIN)
    assert not await _socket_from(ui, cookies, ui.url.replace("127.0.0.1", "127.0.0.2"))
    assert await _socket_from(ui, cookies, ui.url), "the UI's own page"
    assert await _socket_from(ui, cookies, TRUSTED_ORIGIN), "an origin in RAG_UI_ORIGINS"


def test_cross_site_http_calls_get_no_cors_permission(ui: SecureUI) -> None:
    """Chainlit's CORS middleware holds the configured origins, not every site."""
    cookies = {"access_token": "x"}
    with httpx.Client(base_url=ui.url, timeout=30, cookies=cookies) as http:
        preflight = {"Access-Control-Request-Method": "POST"}
        refused = http.options("/project/file", headers={"Origin": FOREIGN_ORIGIN} | preflight)
        assert refused.status_code == 400, refused.text
        assert "access-control-allow-origin" not in refused.headers
        allowed = http.options("/project/file", headers={"Origin": TRUSTED_ORIGIN} | preflight)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == TRUSTED_ORIGIN
        simple = http.get("/project/settings", headers={"Origin": FOREIGN_ORIGIN})
        assert "access-control-allow-origin" not in simple.headers


def test_the_runtime_config_holds_the_upload_limit_and_the_origins(ui: SecureUI) -> None:
    config = tomllib.loads((ui.root / "ui" / ".chainlit" / "config.toml").read_text())
    # Chainlit takes whole megabytes: 0.05 is rounded up for it; ingest.uploads checks 0.05
    assert config["features"]["spontaneous_file_upload"]["max_size_mb"] == 1
    assert TRUSTED_ORIGIN in config["project"]["allow_origins"]
    assert "*" not in config["project"]["allow_origins"]


def test_wrong_passwords_are_refused(ui: SecureUI) -> None:
    for username, password in [
        ("alice", "wrong"),
        ("alice", PASSWORD[:-1]),
        ("alice", PASSWORD + "x"),
        ("ALICE", PASSWORD),
        ("eve", PASSWORD),
        ("alice:" + PASSWORD, "x"),
    ]:
        response = httpx.post(
            f"{ui.url}/login", data={"username": username, "password": password}, timeout=30
        )
        assert response.status_code == 401, (username, response.status_code)
        assert "access_token" not in response.cookies
    empty = httpx.post(f"{ui.url}/login", data={"username": "alice", "password": ""}, timeout=30)
    assert empty.status_code in (401, 422) and "access_token" not in empty.cookies


# --------------------------------------------------------------------------------------------
# Uploads: hostile names, limits, duplicates
# --------------------------------------------------------------------------------------------


async def upload_named(
    client: ChainlitClient, name: str, data: bytes, *, status: int = 200
) -> dict[str, Any]:
    """POST a file under any name, sent as is (httpx leaves "/" and ".." in the filename)."""
    async with httpx.AsyncClient(base_url=client.base_url, cookies=client.cookies) as http:
        response = await http.post(
            "/project/file",
            params={"session_id": client.session_id},
            files={"file": (name, data, "text/plain")},
            timeout=30,
        )
    assert response.status_code == status, response.text
    return dict(response.json())


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def report_line(turn: Turn) -> str:
    (step,) = turn.steps("tool")
    return str(step["output"])


async def test_hostile_upload_names_stay_in_the_upload_folder(ui: SecureUI) -> None:
    client = await signed_in(ui)
    before = files_under(ui.root)
    names = {
        "../../escape_one.txt": "escape_one.txt",
        "/tmp/escape_two.txt": "escape_two.txt",
        "..\\..\\escape_three.txt": "escape_three.txt",
        "a" * 300 + ".txt": "a" * (120 - 4) + ".txt",
        "../../x/.txt": None,  # no usable name and no suffix: refused
    }
    try:
        for name, stored in names.items():
            file = await upload_named(client, name, b"The heron code is HX-77.\n")
            turn = await client.ask("", files=[file], limit=60)
            line = report_line(turn)
            if stored is None:
                assert line.startswith("❌") and "unsupported type" in line, line
            else:
                assert line.startswith(f"✅ {stored}: 1 passage added"), line
    finally:
        await client.close()
    new = files_under(ui.root) - before
    # alice's folder: a hash of her identifier, one level under the upload folder
    uploads = (ui.root / "uploads" / owner_folder("alice")).resolve()
    # the Milvus data, the history database and Chainlit's session files change too
    kept = (ui.root / "milvus", ui.root / "cwd" / "data", ui.root / "ui" / ".files")
    outside = {
        p
        for p in new
        if p.resolve().parent != uploads and not any(p.is_relative_to(k) for k in kept)
    }
    assert not outside, f"written outside the upload folder: {outside}"
    stored_names = {p.name for p in new if p.resolve().parent == uploads}
    # each named <content digest>-<safe name> (the digest: 13 of the 120 characters)
    assert {re.sub(r"^[0-9a-f]{12}-", "", n) for n in stored_names} == {
        s[: 120 - 13 - 4] + ".txt" if len(s) > 100 else s for s in names.values() if s
    }, stored_names
    for stray in ("escape_one.txt", "escape_two.txt", "escape_three.txt"):
        assert not (ui.root / stray).exists() and not (ui.root.parent / stray).exists()
        assert not Path(ui.root.anchor, "tmp", stray).exists()  # noqa: ASYNC240


async def test_uploads_over_the_limit_or_of_a_wrong_type_are_refused(ui: SecureUI) -> None:
    client = await signed_in(ui)
    try:
        big = await upload_named(client, "big.txt", b"x " * int(UPLOAD_LIMIT_MB * 1e6))
        # Chainlit's own accept list stops other types at the door (ingest.uploads checks again)
        for name in ("setup.exe", "notes.txt.exe", "script.sh"):
            refused = await upload_named(client, name, b"MZ\x90\x00", status=400)
            assert refused == {"detail": "File type not allowed"}
        turn = await client.ask("", files=[big], limit=60)
        lines = report_line(turn).splitlines()
        assert len(lines) == 1 and lines[0].startswith("❌ big.txt:"), lines
        assert "upload limit" in lines[0], lines
    finally:
        await client.close()
    assert not (ui.root / "uploads" / "big.txt").exists()
    assert not (ui.root / "uploads" / "setup.exe").exists()


async def test_a_duplicate_upload_name_is_another_file_and_the_same_file_is_one(
    ui: SecureUI,
) -> None:
    """Two versions under one name are two files, neither replacing the other (both the
    owner's); the same file dropped again is found unchanged and written once."""
    client = await signed_in(ui)
    versions = [b"Version one: the gate code is 1111.\n", b"Version two: the gate code is 2222.\n"]
    try:
        for data in [*versions, versions[1]]:
            file = await upload_named(client, "notes.txt", data)
            turn = await client.ask("", files=[file], limit=60)
        assert report_line(turn) == "✅ notes.txt: already added (1 passage)", report_line(turn)
    finally:
        await client.close()
    store = ui.milvus.client()
    try:
        prefix = f"uploads/{owner_folder('alice')}/"
        rows = await asyncio.to_thread(
            read_rows, store, "chat_ui", ["source", "owner", "text"], f'source like "{prefix}%"'
        )
    finally:
        store.close()
    notes = sorted((r["text"], r["owner"]) for r in rows if r["source"].endswith("-notes.txt"))
    # The stored text starts with the contextual header (the file's name as its title).
    assert [owner for _, owner in notes] == ["alice", "alice"]
    assert [text.rsplit("\n\n", 1)[-1] for text, _ in notes] == [
        "Version one: the gate code is 1111.",
        "Version two: the gate code is 2222.",
    ]
    folder = ui.root / "uploads" / owner_folder("alice")
    stored = sorted(p.read_bytes() for p in folder.glob("*-notes.txt"))
    assert stored == versions


# --------------------------------------------------------------------------------------------
# Secrets never reach the log (runs last in the module: it reads the whole log)
# --------------------------------------------------------------------------------------------


def test_zz_no_secret_or_password_in_the_ui_log(ui: SecureUI) -> None:
    # something worth logging happens first: failed logins and a failed model call
    httpx.post(f"{ui.url}/login", data={"username": "alice", "password": "guess"}, timeout=30)
    log = ui.log.read_text(encoding="utf-8", errors="replace")
    assert log.strip(), "the UI wrote no log at all"
    for name, value in {**SECRETS, "password": PASSWORD, "bob": "pw-bob-NEVER-SHOWN"}.items():
        assert value not in log, f"{name} appears in the UI log"
    # the chat and embedding calls really carried the keys (so they were in play)
    seen = {r.headers.get("authorization") for r in ui.fake.fake.requests}
    assert f"Bearer {SECRETS['RAG_EMBEDDING_API_KEY']}" in seen
