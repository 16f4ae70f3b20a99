"""Who may sign in to the chat: the `RAG_UI_USERS` list, parsed so that it fails closed.

A malformed entry must stop the start: a list that parsed into no users would start the
chat with no login at all, silently. Passwords may be written as argon2 hashes (`rag passwd`
prints one), so no plain password has to sit in `.env`; plain ones keep working and are
compared in constant time. argon2-cffi is the reference binding of the password-hashing
competition's winner and is kept up to date; its ``PasswordHasher`` defaults are the
RFC 9106 low-memory profile.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping, Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ARGON2_PREFIX = "$argon2"
AUTH_SECRET_VARIABLE = "CHAINLIT_AUTH_SECRET"
# Chainlit signs its session tokens with this secret (HS256): short ones are guessable.
MIN_AUTH_SECRET = 32
_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
# An argon2 hash holds commas of its own ($m=65536,t=3,p=4$): entries split around them.
_ARGON2 = re.compile(
    r"\$argon2(?:id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
_hasher = PasswordHasher()


def parse_users(text: str) -> dict[str, str]:
    """``user:password`` (or ``user:$argon2id$…``) entries separated by commas.

    Raises ValueError naming the entry by its position (never its password) for an entry
    without ``:``, an empty user or password, a name with odd characters, an empty entry
    (``a:x,,b:y``) or a user listed twice.
    """
    users: dict[str, str] = {}
    hashes = _ARGON2.findall(text)
    protected = _ARGON2.sub("\0", text)
    for number, raw in enumerate(protected.split(","), 1):
        where = f"entry {number}"
        entry = raw.strip()
        if "\0" in entry:
            entry = entry.replace("\0", hashes.pop(0), 1)
        if not entry:
            raise ValueError(f"{where} is empty (write user:password, separated by commas)")
        if ":" not in entry:
            raise ValueError(f"{where} has no ':' (write user:password)")
        user, password = entry.split(":", 1)
        user = user.strip()
        if not user:
            raise ValueError(f"{where} has an empty user name")
        if not _NAME.fullmatch(user):
            raise ValueError(
                f"{where}: user names are 1-64 letters, digits or . _ @ + - (got {user!r})"
            )
        if not password:
            raise ValueError(f"{where} ({user}) has an empty password")
        if password.startswith(ARGON2_PREFIX):
            _check_hash(password, f"{where} ({user})")
        if user in users:
            raise ValueError(f"{where}: user {user!r} is listed twice")
        users[user] = password
    return users


def _check_hash(stored: str, where: str) -> None:
    try:
        _hasher.check_needs_rehash(stored)  # parses the hash's parameters
    except (InvalidHashError, ValueError) as error:
        raise ValueError(f"{where} has a malformed argon2 hash ({error})") from None


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` for `RAG_UI_USERS` (what `rag passwd` prints)."""
    if not password:
        raise ValueError("the password is empty")
    return _hasher.hash(password)


def verify(stored: str, given: str) -> bool:
    """Does ``given`` match the stored password or hash? Constant time for plain ones."""
    if stored.startswith(ARGON2_PREFIX):
        try:
            return _hasher.verify(stored, given)
        except (VerificationError, InvalidHashError):
            return False
    return hmac.compare_digest(stored.encode(), given.encode())


def auth_secret_problem(secret: str | None) -> str | None:
    """Why the login cannot start with this `CHAINLIT_AUTH_SECRET`, or None when it can."""
    if not secret:
        return (
            f"{AUTH_SECRET_VARIABLE} is not set: a login (RAG_UI_USERS) needs it to sign "
            f"sessions; make one with `chainlit create-secret`"
        )
    if len(secret) < MIN_AUTH_SECRET:
        return (
            f"{AUTH_SECRET_VARIABLE} is {len(secret)} characters; use at least "
            f"{MIN_AUTH_SECRET} (`chainlit create-secret` makes one)"
        )
    return None


# --- a company login in front of the chat -------------------------------------------------
# Chainlit signs people in with an OAuth provider (GitHub, Google, Azure AD, Okta, Keycloak,
# Auth0, GitLab, …) when that provider's OAUTH_<NAME>_CLIENT_ID/SECRET variables are set,
# and it trusts a header set by an authenticating proxy when the app defines a header
# callback. Both are configuration here: RAG_UI_OAUTH_ALLOW says who of the provider's
# users may enter (an OAuth login without it would let in everyone with an account), and
# RAG_UI_TRUSTED_HEADER names the proxy's header.
OAUTH_ALLOW_MISSING = (
    "an OAuth provider is configured (OAUTH_*_CLIENT_ID) but RAG_UI_OAUTH_ALLOW is empty: "
    "list the email addresses or @domains that may sign in"
)
_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")
_DOMAIN = re.compile(r"^@[^@\s,]+\.[^@\s,]+$")


def oauth_configured(environ: Mapping[str, str]) -> bool:
    """Is an OAuth provider configured (Chainlit turns it on from OAUTH_*_CLIENT_ID)?"""
    return any(
        name.startswith("OAUTH_") and name.endswith("_CLIENT_ID") and value.strip()
        for name, value in environ.items()
    )


def parse_allow(text: str) -> tuple[str, ...]:
    """``alice@example.org`` and ``@example.org`` entries, comma-separated, lower-cased."""
    entries = tuple(item.strip().lower() for item in text.split(",") if item.strip())
    for entry in entries:
        if not (_EMAIL.fullmatch(entry) or _DOMAIN.fullmatch(entry)):
            raise ValueError(f"{entry!r} is neither an email address nor @domain")
    return entries


def allowed(identity: str, allow: Sequence[str]) -> bool:
    """May this OAuth identity (an email address) enter, by address or by domain?"""
    identity = identity.strip().lower()
    return any(identity == entry or identity.endswith(entry) for entry in allow if entry)


def valid_header_name(name: str) -> bool:
    return bool(_HEADER.fullmatch(name))


def header_user(value: str | None) -> str | None:
    """The user a trusted proxy named in its header, if it is a usable name."""
    value = (value or "").strip()
    return value if value and len(value) <= 200 and value.isprintable() else None


# --- API keys for the HTTP API (`rag serve`) ------------------------------------------------
# A key is ``<owner>.<secret>``: the owner part says which entries of RAG_API_KEYS to check,
# so a request costs one argon2 verification (about 50 ms of CPU) instead of one per
# configured key, and a flood of wrong keys cannot multiply that cost. The secret is 32
# random bytes (URL-safe base64, which has no '.'); only its argon2 hash is configured.
API_KEY_BYTES = 32
# Bearer tokens are base64-ish (RFC 6750 b64token): owner names for keys skip '@' and '+'.
_KEY_OWNER = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_KEY_SECRET = re.compile(r"^[A-Za-z0-9_-]{20,200}$")


def parse_api_keys(text: str) -> dict[str, tuple[str, ...]]:
    """``owner:$argon2id$…`` entries separated by commas → owner → its keys' hashes.

    Fails closed like `parse_users`: an empty entry, a missing ``:``, an odd owner name or
    anything but an argon2 hash stops the start (a plain key in `.env` is refused: `rag
    api-key OWNER` mints one and prints its entry). One owner may be listed more than once,
    one entry per key, so a key can be replaced without a moment of downtime.
    """
    keys: dict[str, list[str]] = {}
    hashes = _ARGON2.findall(text)
    protected = _ARGON2.sub("\0", text)
    for number, raw in enumerate(protected.split(","), 1):
        where = f"entry {number}"
        entry = raw.strip()
        if not entry:
            raise ValueError(f"{where} is empty (write owner:HASH, separated by commas)")
        if ":" not in entry:
            raise ValueError(f"{where} has no ':' (write owner:HASH from `rag api-key OWNER`)")
        owner, stored = (part.strip() for part in entry.split(":", 1))
        if not _KEY_OWNER.fullmatch(owner):
            raise ValueError(
                f"{where}: owner names are 1-64 letters, digits or . _ - (got {owner!r})"
            )
        if stored != "\0":
            raise ValueError(
                f"{where} ({owner}) is not an argon2 hash; mint a key with `rag api-key {owner}`"
            )
        stored = hashes.pop(0)
        _check_hash(stored, f"{where} ({owner})")
        keys.setdefault(owner, []).append(stored)
    return {owner: tuple(stored) for owner, stored in keys.items()}


def mint_api_key(owner: str) -> tuple[str, str]:
    """A new key for ``owner`` and its RAG_API_KEYS entry (``owner:argon2 hash``)."""
    if not _KEY_OWNER.fullmatch(owner):
        raise ValueError(f"owner names are 1-64 letters, digits or . _ - (got {owner!r})")
    key = f"{owner}.{secrets.token_urlsafe(API_KEY_BYTES)}"
    return key, f"{owner}:{hash_password(key)}"


def key_owner(key: str) -> str | None:
    """The owner a presented key claims (checked by `verify` against that owner's hashes),
    or None for a string that is not shaped like a key."""
    owner, dot, secret = key.rpartition(".")
    if not dot or not _KEY_OWNER.fullmatch(owner) or not _KEY_SECRET.fullmatch(secret):
        return None
    return owner
