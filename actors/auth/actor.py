"""AuthActor: who is calling, and whether that key may do what it asks.

Keys come from three places: plain keys in the configuration (`auth.api_keys`, and
`auth.admin_keys` for /admin only), hashed key records in the configuration (`auth.keys`,
for infrastructure-as-code), and the key store (`auth.key_store`, managed with
`citadel-gateway keys` and /admin/keys): a SQLite file (KeyStoreActor) or, for a fleet,
PostgreSQL (PgKeyStoreActor, whose notifications drop a changed key from the cache at once).

Store lookups are cached in the actor for at most `cache_ttl` seconds, so the hot path does
not touch SQLite and a revocation anywhere (the CLI, another worker) takes effect within that
time; a revocation through this gateway's admin API takes effect at once. The cache is a
dict in the actor, not aiocache: aiocache's API is coroutine-only (4.3 µs a `get` with
timeout=None, 48 µs with its default timeout, measured here), so every check would have to be
an asynchronous ask through the actor's mailbox (7 µs and an event-loop hop, against 0.3 µs
for a SyncActor's direct ask: `make bench-actors`), on every request.

Every refusal looks the same to the caller whatever the reason (unknown id, wrong secret,
revoked, expired): one message, and the same work, a SHA-256 and a constant-time compare.
An address that keeps failing is throttled for the rest of its window.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import structlog

from actors.auth.keys import KeyRecord, KeyScopes, secret_matches, split_key
from actors.auth.store import LookupKey
from actors.kernel import (
    ActorDead,
    ActorRef,
    Ask,
    AskTimeout,
    MailboxFull,
    SyncActor,
    ask_settled,
    settle_reply,
)
from actors.kernel.frozen import quick_init

log = structlog.get_logger("actors.auth.actor")

STORE_ASK_TIMEOUT = 2.0


@quick_init
@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    key_id: str
    scopes: KeyScopes
    admin_only: bool = False  # a plain `auth.admin_keys` key: /admin only


ANONYMOUS = Principal("anonymous", KeyScopes())
_ADMIN_ONLY = KeyScopes(models=(), endpoints=(), admin=True)


class Refusal(StrEnum):
    MISSING = "missing"
    INVALID = "invalid"  # malformed, unknown, revoked, expired: the caller is not told which
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"  # the key store did not answer


class AuthRefused(Exception):
    def __init__(self, reason: Refusal, retry_after: float = 0.0) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.retry_after = retry_after


@quick_init
@dataclass(frozen=True, slots=True)
class Authenticate(Ask["Principal"]):
    """Ask: the Principal for a presented key (None: none presented), from `address`."""

    key: str | None
    address: str


@dataclass(frozen=True, slots=True)
class ForgetKey(Ask[None]):
    """Ask: drop a cached lookup (the key was revoked or rotated through this gateway)."""

    key_id: str


@dataclass(frozen=True, slots=True)
class ForgetAllKeys:
    """Tell: drop every cached lookup (the key store's notifications were down a while)."""


@dataclass(frozen=True, slots=True)
class UseSources:
    """Ask: check keys against these sources from now on (a reload); the store stays."""

    sources: AuthSources


@dataclass(frozen=True, slots=True)
class _Looked:
    """Self-tell: what the store answered for a key id, to cache and verify."""

    key_id: str
    record: KeyRecord | None
    secret: str
    address: str


@dataclass(frozen=True, slots=True)
class AuthSources:
    plain_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    records: tuple[KeyRecord, ...] = ()
    store: ActorRef | None = None  # KeyStoreActor's host
    has_store: bool = False  # a store is configured (its ref is added by the tree)
    failure_limit: int = 20  # failed attempts per address per window before throttling
    failure_window: float = 60.0
    cache_ttl: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.plain_keys or self.records or self.has_store or self.store is not None)


class _Failures:
    """Failed attempts per address in fixed windows; bounded: old windows are dropped."""

    MAX_ADDRESSES = 100_000

    def __init__(self, limit: int, window: float) -> None:
        self._limit, self._window = limit, window
        self._counts: dict[str, tuple[float, int]] = {}

    def throttled_for(self, address: str, now: float) -> float:
        start, count = self._counts.get(address, (now, 0))
        if now - start >= self._window or count <= self._limit:
            return 0.0
        return start + self._window - now

    def add(self, address: str, now: float) -> None:
        start, count = self._counts.get(address, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        if len(self._counts) >= self.MAX_ADDRESSES:  # keep only the current windows
            self._counts = {a: v for a, v in self._counts.items() if now - v[0] < self._window}
        self._counts[address] = (start, count + 1)


class _Lookups:
    """Store lookups by key id, each kept for `ttl` seconds (the revocation delay); misses
    are kept too, so an unknown id costs one store query per `ttl`, not one per request."""

    MAX_ENTRIES = 100_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[KeyRecord | None, float]] = {}

    def get(self, key_id: str, now: float) -> tuple[bool, KeyRecord | None]:
        """(found, record): found is False when the id must be looked up."""
        entry = self._entries.get(key_id)
        if entry is None or now >= entry[1]:
            return False, None
        return True, entry[0]

    def put(self, key_id: str, record: KeyRecord | None, now: float) -> None:
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {k: v for k, v in self._entries.items() if now < v[1]}
        self._entries[key_id] = (record, now + self.ttl)

    def forget(self, key_id: str) -> None:
        self._entries.pop(key_id, None)


class AuthActor(SyncActor):
    """Every check runs synchronously in the asker's task (a SyncActor: no event-loop hop),
    except a store lookup that is not cached: that one is answered with a future, resolved
    once KeyStoreActor has answered (a deferred reply, as RouterActor's AwaitRoom)."""

    def __init__(self, sources: AuthSources) -> None:
        self._use(sources)
        self.refused = 0
        self.lookups = 0

    def _use(self, sources: AuthSources) -> None:
        self._sources = sources
        self._plain = {
            _digest(key): Principal(f"static-{i}", KeyScopes())
            for i, key in enumerate(sources.plain_keys)
        }
        for i, key in enumerate(sources.admin_keys):
            self._plain[_digest(key)] = Principal(f"admin-{i}", _ADMIN_ONLY, admin_only=True)
        self._records = {record.id: record for record in sources.records}
        self._failures = _Failures(sources.failure_limit, sources.failure_window)
        self._cache = _Lookups(sources.cache_ttl)

    def handle(self, message: Any) -> Any:
        match message:
            case Authenticate(key=key, address=address):
                return self._authenticate(key, address)
            case UseSources(sources=sources):
                self._use(replace(sources, store=self._sources.store))
                return None
            case ForgetKey(key_id=key_id):
                self._cache.forget(key_id)
                return None
            case ForgetAllKeys():
                self._cache = _Lookups(self._sources.cache_ttl)
                return None
            case _Looked(key_id=key_id, record=record, secret=secret, address=address):
                self._cache.put(key_id, record, time.monotonic())
                return self._verify(record, secret, address, time.monotonic())
        return super().handle(message)

    def _authenticate(self, key: str | None, address: str) -> Principal | asyncio.Future[Any]:
        now = time.monotonic()
        if key is not None and self._plain:  # no plain keys (the usual case): no hash
            plain = self._plain.get(_digest(key))
            if plain is not None:
                return plain
        if not self._sources.enabled:
            return ANONYMOUS  # no model keys at all: the model endpoints are open
        if key is None:
            raise AuthRefused(Refusal.MISSING)  # no secret guessed: not counted
        parts = split_key(key)
        if parts is None:
            secret_matches(key, None)  # the same work as a wrong secret
            raise self._refuse(Refusal.INVALID, address, now)
        key_id, secret = parts
        record = self._records.get(key_id)
        if record is None and self._sources.store is not None:
            found, record = self._cache.get(key_id, now)
            if not found:
                return self._look_up(key_id, secret, address)
        return self._verify(record, secret, address, now)

    def _verify(self, record: KeyRecord | None, secret: str, address: str, now: float) -> Principal:
        valid = (
            secret_matches(secret, record.secret_sha256 if record else None)
            and record is not None
            and record.revoked_at is None
            and not record.scopes.expired()
        )
        if not valid or record is None:
            raise self._refuse(Refusal.INVALID, address, now)
        return Principal(record.id, record.scopes)

    def _look_up(self, key_id: str, secret: str, address: str) -> asyncio.Future[Any]:
        """Ask the store off this actor's turn; the answer comes back as a message, so the
        cache and the failure counts are only ever touched by `handle`."""
        self.lookups += 1
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        store, me = self._sources.store, self.context.self_ref
        assert store is not None

        async def look_up() -> None:
            try:
                # The SQLite store answers at once; PostgreSQL's defers its reply.
                record = await ask_settled(store, LookupKey(key_id), timeout=STORE_ASK_TIMEOUT)
                result = await me.ask(_Looked(key_id, record, secret, address))
            except AuthRefused as refused:
                settle_reply(reply, error=refused)
            except (ActorDead, AskTimeout, MailboxFull):
                settle_reply(reply, error=AuthRefused(Refusal.UNAVAILABLE, retry_after=1.0))
            except Exception as exc:  # noqa: BLE001 - a store failure must not crash auth
                # (a crash loop here would take the root supervisor, and the process, down)
                log.error("key_lookup_failed", key_id=key_id, error=repr(exc))
                settle_reply(reply, error=AuthRefused(Refusal.UNAVAILABLE, retry_after=1.0))
            else:
                settle_reply(reply, result=result)

        self.context.spawn_task(look_up(), name=f"key-lookup-{key_id}")
        return reply

    def _refuse(self, reason: Refusal, address: str, now: float) -> AuthRefused:
        """A refused key. Past `failure_limit` refusals a minute from one address, refusals
        from there are 429s with a wait: the throttle slows failures, never a valid key
        (secrets are 256 random bits: it protects the process, not the keys), so an office
        behind one address is not locked out by one misconfigured client."""
        self.refused += 1
        self._failures.add(address, now)
        wait = self._failures.throttled_for(address, now)
        if wait > 0:
            return AuthRefused(Refusal.THROTTLED, retry_after=wait)
        return AuthRefused(reason)

    def introspect(self) -> dict[str, Any]:
        return {
            "plain_keys": len(self._plain),
            "configured_keys": len(self._records),
            "key_store": self._sources.store is not None,
            "refused": self.refused,
            "store_lookups": self.lookups,
        }


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def retry_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))
