"""API keys: RAG_API_KEYS fails closed, keys verify against their owner's hashes only, and a
verified key is not hashed again (50 streams with one key cost one argon2 verification).
"""

from __future__ import annotations

import asyncio

import pytest

import rag.api.keys
from rag.api.keys import ApiKeys, bearer_key
from rag.auth import key_owner, mint_api_key, parse_api_keys
from rag.config import load_settings
from rag.errors import ConfigError


@pytest.fixture(scope="module")
def minted() -> dict[str, tuple[str, str]]:
    return {owner: mint_api_key(owner) for owner in ("alice", "bob")}


def test_a_minted_key_names_its_owner_and_its_entry_parses(
    minted: dict[str, tuple[str, str]],
) -> None:
    key, entry = minted["alice"]
    assert key_owner(key) == "alice" and entry.startswith("alice:$argon2id$")
    assert key not in entry  # only the hash is configured
    entries = f"{entry}, {minted['bob'][1]}, {mint_api_key('alice')[1]}"
    parsed = parse_api_keys(entries)
    assert sorted(parsed) == ["alice", "bob"] and len(parsed["alice"]) == 2  # key rotation


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("alice", "entry 1 has no ':'"),
        ("alice:plain-text-key", "entry 1 (alice) is not an argon2 hash"),
        ("{alice},", "entry 2 is empty"),
        ("al ice:{hash}", "entry 1: owner names"),
        ("alice:$argon2id$v=19$m=65536,t=3,p=4$abc", "entry 1 (alice) is not an argon2 hash"),
    ],
)
def test_a_malformed_rag_api_keys_stops_the_start(
    minted: dict[str, tuple[str, str]], value: str, problem: str
) -> None:
    entry = minted["alice"][1]
    value = value.replace("{alice}", entry).replace("{hash}", entry.split(":", 1)[1])
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, api_keys=value)
    message = str(caught.value)
    assert "RAG_API_KEYS" in message and problem in message
    assert "\n" not in message and "$argon2" not in message  # one line, no hash echoed


def test_an_empty_rag_api_keys_means_no_keys() -> None:
    assert load_settings(_env_file=None, api_keys="  ").api_key_hashes == {}


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_key(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


async def test_keys_verify_once_even_when_fifty_requests_arrive_together(
    minted: dict[str, tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real argon2 verification, counted: one per distinct key, not one per request."""
    calls: list[str] = []
    real_verify = rag.api.keys.verify

    def counting(stored: str, given: str) -> bool:
        calls.append(given)
        return real_verify(stored, given)

    monkeypatch.setattr(rag.api.keys, "verify", counting)
    keys = ApiKeys(parse_api_keys(",".join(entry for _, entry in minted.values())))
    alice, bob = minted["alice"][0], minted["bob"][0]
    owners = await asyncio.gather(*(keys.owner_of(alice if n % 2 else bob) for n in range(50)))
    assert owners == ["alice" if n % 2 else "bob" for n in range(50)]
    assert sorted(calls) == sorted([alice, bob])
    assert await keys.owner_of(alice) == "alice" and len(calls) == 2  # remembered

    # Wrong keys are checked every time (never remembered), each against one hash at most.
    wrong = "alice." + "x" * 43
    assert await keys.owner_of(wrong) is None
    assert await keys.owner_of(wrong) is None
    assert calls[2:] == [wrong, wrong]
    # bob's key claiming alice fails: it is checked against alice's hash only.
    assert await keys.owner_of("alice." + bob.split(".", 1)[1]) is None
    # An unknown owner costs one verification too, against a dummy hash: the time taken
    # does not tell which owners exist.
    assert await keys.owner_of("mallory." + "y" * 43) is None
    assert len(calls) == 6
