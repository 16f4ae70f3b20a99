"""RAG_UI_USERS fails closed: every malformed list is refused, hashed passwords verify."""

from __future__ import annotations

import pytest

from rag.auth import auth_secret_problem, hash_password, parse_users, verify
from rag.config import load_settings
from rag.errors import ConfigError


def test_plain_and_hashed_entries_parse() -> None:
    hashed = hash_password("hunter2")
    users = parse_users(f" alice:s3cret , bob:{hashed}")
    assert users == {"alice": "s3cret", "bob": hashed}
    assert verify(users["alice"], "s3cret") and not verify(users["alice"], "s3cret ")
    assert verify(users["bob"], "hunter2") and not verify(users["bob"], "hunter3")
    assert "hunter2" not in hashed


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("alice", "entry 1 has no ':'"),
        ("alice:", "entry 1 (alice) has an empty password"),
        (":pw", "entry 1 has an empty user name"),
        ("alice:pw,,bob:x", "entry 2 is empty"),
        ("alice:pw,alice:other", "listed twice"),
        ("al ice:pw", "user names are"),
        ("alice:$argon2id$broken", "malformed argon2 hash"),
    ],
)
def test_malformed_users_stop_the_settings_with_one_line(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ui_users=value)
    message = str(caught.value)
    assert "RAG_UI_USERS" in message and says in message and "\n" not in message
    assert "pw" not in message.replace("RAG_UI_USERS", "")  # no password is ever echoed


def test_unset_or_blank_users_mean_no_login() -> None:
    assert load_settings(ui_users=None).login_users == {}
    assert load_settings(ui_users="  ").login_users == {}


def test_a_login_needs_a_long_auth_secret() -> None:
    assert "CHAINLIT_AUTH_SECRET is not set" in (auth_secret_problem(None) or "")
    assert "at least 32" in (auth_secret_problem("short") or "")
    assert auth_secret_problem("x" * 40) is None


def test_hashing_an_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")
