"""Who is calling: an ``Authorization: Bearer <key>`` checked against RAG_API_KEYS.

Keys are stored as argon2 hashes (`rag.auth`), and one verification costs ~50 ms of CPU
on purpose. Paying that per request would let 50 concurrent streams spend seconds of two
cores on hashing, so a key that verified once is remembered by its SHA-256 (never the key
itself), and concurrent first requests with one key share a single verification. Only
keys that verified are remembered: their number is bounded by the configured entries,
while remembering wrong ones would let anyone fill the memory.

Wrong keys cannot be cached, so their cost is bounded instead: a key names its owner
(``owner.secret``), so only that owner's hashes are checked; an unknown owner is checked
against a dummy hash (the answer takes as long as for a known one, so it does not say which
owners exist); and at most ``MAX_VERIFYING`` verifications run at once, in threads
(argon2-cffi releases the GIL while hashing), so the event loop keeps serving streams.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from rag.auth import hash_password, key_owner, verify
from rag.store.schema import SHARED

MAX_VERIFYING = 2  # argon2 verifications at once: one per core of a small machine


@dataclass(frozen=True)
class Caller:
    """Whose request this is: an owner key (rows and uploads of its own), or anonymous."""

    owner: str
    anonymous: bool = False

    @property
    def viewer(self) -> str:
        """What every search runs as (`SearchOptions.viewer`): shared rows plus its own."""
        return SHARED if self.anonymous else self.owner


ANONYMOUS = Caller(SHARED, anonymous=True)


@dataclass
class ApiKeys:
    """The configured keys (owner → argon2 hashes) and the ones already verified."""

    hashes: Mapping[str, tuple[str, ...]]
    _verified: dict[bytes, str] = field(default_factory=dict, repr=False)
    _pending: dict[bytes, asyncio.Future[str | None]] = field(default_factory=dict, repr=False)
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)
    _dummy: str | None = field(default=None, repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.hashes)

    async def owner_of(self, key: str) -> str | None:
        """The owner ``key`` belongs to, or None for a wrong key."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        if (owner := self._verified.get(digest)) is not None:
            return owner
        while (pending := self._pending.get(digest)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled, not the shared verification
        if (owner := self._verified.get(digest)) is not None:
            return owner
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            owner = await self._check(key)
            if owner is not None:
                self._verified[digest] = owner
            future.set_result(owner)
            return owner
        except asyncio.CancelledError:
            future.cancel()  # a waiter sees it and verifies for itself
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # marked as retrieved: nobody else may be waiting for it
            raise
        finally:
            del self._pending[digest]

    async def _check(self, key: str) -> str | None:
        claimed = key_owner(key)
        stored = self.hashes.get(claimed or "", ())
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_VERIFYING)
        async with self._slots:
            if not stored:
                await asyncio.to_thread(self._waste_time, key)
                return None
            for candidate in stored:
                if await asyncio.to_thread(verify, candidate, key):
                    return claimed
        return None

    def _waste_time(self, key: str) -> None:
        """Blocking: as long as checking a real owner's hash, and always False."""
        if self._dummy is None:
            self._dummy = hash_password("not a key anybody holds")
        verify(self._dummy, key)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None without one."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
