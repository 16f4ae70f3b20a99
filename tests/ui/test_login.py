"""With users configured, the chat is unreachable until signed in; without, it is open."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from rag.auth import hash_password
from rag.local.server import free_port
from tests.conftest import run_rag
from tests.support.cli_inprocess import invoke_rag
from tests.support.ui_process import running_ui as start_ui_at


@contextlib.contextmanager
def running_ui(tmp_path: Path, extra: dict[str, str]) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "CHAINLIT_"))}
    env |= {
        "RAG_MILVUS_URI": str(tmp_path / "m.db"),
        "RAG_UI_DIR": str(tmp_path / "ui"),
        "RAG_UPLOAD_DIR": str(tmp_path / "uploads"),
        # No question is asked here: a closed port is enough and starts nothing.
        "RAG_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        **extra,
    }
    log = tmp_path / "ui.log"
    with start_ui_at(cwd=tmp_path, env=env, log=log, ready="/auth/config") as base:
        yield base


@pytest.mark.timeout(120)
def test_login_is_required_when_users_are_configured(tmp_path: Path) -> None:
    # bob's password is stored as an argon2 hash (`rag passwd`), alice's in plain text.
    users = {
        "RAG_UI_USERS": f"alice:s3cret,bob:{hash_password('hunter2')}",
        "CHAINLIT_AUTH_SECRET": "x" * 40,
    }
    with running_ui(tmp_path, users) as base:
        config = httpx.get(f"{base}/auth/config").json()
        assert config["requireLogin"] is True and config["passwordAuth"] is True
        assert httpx.get(f"{base}/user").status_code == 401
        wrong = httpx.post(f"{base}/login", data={"username": "alice", "password": "nope"})
        assert wrong.status_code == 401
        unknown = httpx.post(f"{base}/login", data={"username": "eve", "password": "s3cret"})
        assert unknown.status_code == 401
        with httpx.Client(base_url=base) as client:
            ok = client.post("/login", data={"username": "alice", "password": "s3cret"})
            assert ok.status_code == 200, ok.text
            me = client.get("/user")
            assert me.status_code == 200 and me.json()["identifier"] == "alice"
        hashed_wrong = httpx.post(f"{base}/login", data={"username": "bob", "password": "hunter3"})
        assert hashed_wrong.status_code == 401
        with httpx.Client(base_url=base) as client:
            ok = client.post("/login", data={"username": "bob", "password": "hunter2"})
            assert ok.status_code == 200, ok.text
            assert client.get("/user").json()["identifier"] == "bob"


@pytest.mark.timeout(120)
def test_chat_is_open_without_users(tmp_path: Path) -> None:
    extra = {"RAG_UPLOAD_MAX_MB": "3", "RAG_UI_ORIGINS": "https://chat.example.org"}
    with running_ui(tmp_path, extra) as base:
        config = httpx.get(f"{base}/auth/config").json()
        assert not config["requireLogin"] and config["passwordAuth"] is False
        # `rag ui --port N` wrote Chainlit's config for this address and this upload limit.
        written = tomllib.loads((tmp_path / "ui" / ".chainlit" / "config.toml").read_text())
        assert set(written["project"]["allow_origins"]) == {
            base,
            base.replace("127.0.0.1", "localhost"),
            "https://chat.example.org",
        }
        assert written["features"]["spontaneous_file_upload"]["max_size_mb"] == 3


# The first value runs as the console script; the others only vary the input and run
# in-process (``invoke_rag``): the same settings check stops `rag ui` before it serves.
@pytest.mark.parametrize(
    ("users", "run"),
    [("alice", run_rag), ("alice:", invoke_rag), (":pw", invoke_rag),
     ("alice:pw,,bob:x", invoke_rag)],
    ids=["alice", "alice:", ":pw", "alice:pw,,bob:x"],
)  # fmt: skip
@pytest.mark.timeout(60)
def test_malformed_users_stop_rag_ui_with_one_line(
    tmp_path: Path, users: str, run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Never a chat without login because the user list did not parse."""
    done = run(
        "ui", "--port", str(free_port()), cwd=tmp_path,
        RAG_UI_USERS=users, RAG_MILVUS_URI=str(tmp_path / "m.db"),
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAG_UI_USERS" in lines[0], done.stderr
    assert "chat UI:" not in done.stdout


def test_login_without_an_auth_secret_stops_rag_ui(tmp_path: Path) -> None:
    done = run_rag(
        "ui", "--port", str(free_port()), cwd=tmp_path, timeout=60,
        RAG_UI_USERS="alice:s3cret", RAG_MILVUS_URI=str(tmp_path / "m.db"),
        RAG_LLM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CHAINLIT_AUTH_SECRET is not set" in done.stderr
    assert "chat UI:" not in done.stdout


@pytest.mark.timeout(120)
def test_a_trusted_proxy_header_signs_in_and_no_header_does_not(tmp_path: Path) -> None:
    """Header auth behind an authenticating proxy (Chainlit's POST /auth/header)."""
    extra = {"RAG_UI_TRUSTED_HEADER": "X-Remote-User", "CHAINLIT_AUTH_SECRET": "h" * 40}
    with running_ui(tmp_path, extra) as base:
        assert httpx.get(f"{base}/auth/config").json()["requireLogin"] is True
        assert httpx.post(f"{base}/auth/header").status_code == 401
        spoofed = httpx.post(f"{base}/auth/header", headers={"X-Other-User": "mallory"})
        assert spoofed.status_code == 401
        with httpx.Client(base_url=base) as client:
            ok = client.post("/auth/header", headers={"X-Remote-User": "carol@example.org"})
            assert ok.status_code == 200, ok.text
            assert client.get("/user").json()["identifier"] == "carol@example.org"


@pytest.mark.timeout(120)
def test_an_oauth_provider_is_offered_only_with_an_allow_list(tmp_path: Path) -> None:
    """OAuth needs the provider itself to sign in (not reachable offline); what can be
    checked here: the provider is offered, and it cannot be configured to let in anyone."""
    github = {"OAUTH_GITHUB_CLIENT_ID": "id-123", "OAUTH_GITHUB_CLIENT_SECRET": "s" * 20}
    refused = run_rag(
        "ui", "--port", str(free_port()), cwd=tmp_path, timeout=60,
        RAG_MILVUS_URI=str(tmp_path / "m.db"), CHAINLIT_AUTH_SECRET="o" * 40, **github,
    )  # fmt: skip
    assert refused.returncode == 2 and "RAG_UI_OAUTH_ALLOW is empty" in refused.stderr
    extra = {**github, "RAG_UI_OAUTH_ALLOW": "@example.org", "CHAINLIT_AUTH_SECRET": "o" * 40}
    with running_ui(tmp_path, extra) as base:
        config = httpx.get(f"{base}/auth/config").json()
        assert config["requireLogin"] is True and config["oauthProviders"] == ["github"]
