"""RAG_UI_USERS fails closed: every malformed list is refused, hashed passwords verify."""

from __future__ import annotations

import pytest

from rag.auth import (
    allowed,
    auth_secret_problem,
    hash_password,
    oauth_configured,
    parse_allow,
    parse_users,
    verify,
)
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


def test_oauth_allow_lists_match_addresses_and_domains_only() -> None:
    allow = parse_allow(" Alice@Example.org, @corp.example ")
    assert allowed("alice@example.org", allow) and allowed("BOB@corp.example", allow)
    assert not allowed("eve@example.org", allow) and not allowed("eve@notcorp.example.net", allow)
    assert not allowed("eve@evilcorp.example", allow[:1])
    with pytest.raises(ValueError, match="neither an email address nor @domain"):
        parse_allow("example.org")
    assert oauth_configured({"OAUTH_GITHUB_CLIENT_ID": "x"})
    assert not oauth_configured({"OAUTH_GITHUB_CLIENT_ID": " ", "PATH": "/bin"})


def test_a_malformed_trusted_header_or_allow_list_stops_the_settings() -> None:
    with pytest.raises(ConfigError, match="RAG_UI_TRUSTED_HEADER"):
        load_settings(ui_trusted_header="X Remote User")
    with pytest.raises(ConfigError, match="RAG_UI_OAUTH_ALLOW"):
        load_settings(ui_oauth_allow="*")
