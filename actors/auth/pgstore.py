"""The key store in PostgreSQL, for a fleet of gateways, and PgKeyStoreActor, which owns it.

Every gateway of a fleet reads the same `api_keys` table. A change to a key, from any of them
or from the CLI (or from SQL by hand: a trigger sends it), is a NOTIFY on `citadel_keys`
with the key's id; each gateway LISTENs and drops that key from AuthActor's cache at once,
so a revocation anywhere is refused everywhere within milliseconds. When the listening
connection is down, the cache's TTL is the backstop, and reconnection is automatic (the
cache is dropped whole on each reconnection: a notification may have been missed).

PgKeyStoreActor answers the same messages as the SQLite KeyStoreActor (actors.auth.store),
so AuthActor and /admin/keys work on either. It never awaits the database in a handler:
each query runs in a task of its own and answers through a deferred reply.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from actors.auth.keys import KeyRecord, KeyScopes, new_key
from actors.auth.store import (
    STAND_IN,
    CreateKey,
    KeyNotFound,
    ListKeys,
    LookupKey,
    RevokeKey,
    RotateKey,
)
from actors.kernel import SyncActor, settle_reply
from actors.postgres.pool import DOWN, BlockingConnection, close_pool, connection
from actors.postgres.schema import KEYS_CHANNEL

log = structlog.get_logger("actors.auth.pgstore")

_COLUMNS = "id, secret_sha256, scopes, created_at, revoked_at"
QUERY_TIMEOUT = 5.0
KEEPALIVE = 5.0  # seconds between checks that the listening connection is alive
RECONNECT = (0.2, 5.0)  # the listener's reconnection backoff: first and longest wait


class PgKeys:
    """The key store's operations over a connection or a pool (asyncpg's `fetch`/`execute`)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def create(self, scopes: KeyScopes) -> tuple[KeyRecord, str]:
        key_id, key, digest = new_key()
        record = KeyRecord(id=key_id, secret_sha256=digest, scopes=scopes, created_at=time.time())
        await self._db.execute(
            "INSERT INTO api_keys (id, secret_sha256, scopes, created_at) VALUES ($1, $2, $3, $4)",
            record.id, digest, scopes.model_dump_json(), record.created_at,
            timeout=QUERY_TIMEOUT,
        )  # fmt: skip
        return record, key

    async def get(self, key_id: str) -> KeyRecord | None:
        """The key's record, or None; a miss parses a stand-in all the same (an unknown id
        must cost what a known one does, as in the SQLite store)."""
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id, timeout=QUERY_TIMEOUT
        )
        if row is None:
            _record(STAND_IN)
            return None
        return _record(tuple(row))

    async def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        query = f"SELECT {_COLUMNS} FROM api_keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        rows = await self._db.fetch(query + " ORDER BY created_at", timeout=QUERY_TIMEOUT)
        return [_record(tuple(row)) for row in rows]

    async def revoke(self, key_id: str) -> KeyRecord:
        row = await self._db.fetchrow(
            f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2"
            f" RETURNING {_COLUMNS}",
            time.time(), key_id, timeout=QUERY_TIMEOUT,
        )  # fmt: skip
        if row is None:
            raise KeyNotFound(key_id)
        return _record(tuple(row))

    async def rotate(self, key_id: str) -> tuple[KeyRecord, str]:
        """A new key with the same scopes; the old one revoked in the same transaction."""
        async with connection(self._db) as db, db.transaction():
            row = await db.fetchrow(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1 AND revoked_at IS NULL"
                " FOR UPDATE",
                key_id, timeout=QUERY_TIMEOUT,
            )  # fmt: skip
            if row is None:
                raise KeyNotFound(key_id)
            record, key = await PgKeys(db).create(_record(tuple(row)).scopes)
            await db.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2", time.time(), key_id,
                timeout=QUERY_TIMEOUT,
            )  # fmt: skip
        return record, key


def _record(row: tuple[Any, ...]) -> KeyRecord:
    key_id, digest, scopes, created_at, revoked_at = row
    return KeyRecord(
        id=key_id,
        secret_sha256=digest,
        scopes=KeyScopes.model_validate(json.loads(scopes) if isinstance(scopes, str) else scopes),
        created_at=created_at,
        revoked_at=revoked_at,
    )


@dataclass(frozen=True, slots=True)
class _QueryFailed:
    """Self-notice: a query's task met a database that is down."""


@dataclass(frozen=True, slots=True)
class _Heard:
    """Self-notice: the listener heard that a key changed (None: anything may have)."""

    key_id: str | None


@dataclass(frozen=True, slots=True)
class _Listening:
    """Self-notice: the listening connection is up, or down (and will be tried again)."""

    up: bool


class PgKeyStoreActor(SyncActor):
    """Owns the pool of connections to the key store, and the connection that listens.

    `changed(key_id)` is called for each notification (None: anything may have changed, on
    each (re)connection of the listener): the tree points it at AuthActor's cache. What the
    tasks learn (a failure, a notification, the listener's state) comes back as self-notices,
    so the actor's state is only ever changed by `handle`."""

    def __init__(self, url: str, changed: Callable[[str | None], None]) -> None:
        self._url = url
        self._changed = changed
        self._pool: asyncpg.Pool | None = None
        self.listening = False
        self.notifications = 0
        self.reconnections = 0
        self.queries = 0
        self.failures = 0

    async def on_start(self) -> None:
        # No connection is made here (min_size 0): a database that is down at this moment
        # fails lookups (503s), not the actor's start.
        self._pool = await asyncpg.create_pool(self._url, min_size=0, max_size=4, timeout=5)
        self.context.spawn_task(self._listen(), name="key-store-listen")

    async def on_stop(self) -> None:
        await self._close()

    async def on_failure(self, error: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await close_pool(pool)

    def handle(self, message: Any) -> Any:
        match message:
            case LookupKey(key_id=key_id):
                return self._deferred(lambda keys: keys.get(key_id))
            case CreateKey(scopes=scopes):
                return self._deferred(lambda keys: keys.create(scopes))
            case ListKeys(include_revoked=include_revoked):
                return self._deferred(lambda keys: keys.list(include_revoked=include_revoked))
            case RevokeKey(key_id=key_id):
                return self._deferred(lambda keys: keys.revoke(key_id))
            case RotateKey(key_id=key_id):
                return self._deferred(lambda keys: keys.rotate(key_id))
            case _QueryFailed():
                self.failures += 1
                return None
            case _Heard(key_id=changed):
                if changed is not None:
                    self.notifications += 1
                self._changed(changed)
                return None
            case _Listening(up=up):
                if not up:
                    self.reconnections += 1  # the listener tries again after its backoff
                self.listening = up
                return None
        return super().handle(message)

    def _deferred(self, work: Callable[[PgKeys], Awaitable[Any]]) -> asyncio.Future[Any]:
        """Run `work` in a task of its own; its answer settles the reply."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pool = self._pool
        assert pool is not None, "used before on_start"
        self.queries += 1
        me = self.context.self_ref

        async def run() -> None:
            try:
                result = await work(PgKeys(pool))
            except KeyNotFound as missing:
                settle_reply(reply, error=missing)
            except DOWN as exc:
                me.notify(_QueryFailed())
                log.warning("key_store_query_failed", error=repr(exc)[:300])
                settle_reply(reply, error=exc)
            else:
                settle_reply(reply, result=result)

        self.context.spawn_task(run(), name="key-store-query")
        return reply

    async def _listen(self) -> None:
        """LISTEN for key changes for the actor's life, reconnecting with a backoff."""
        wait = RECONNECT[0]
        me = self.context.self_ref
        while True:
            try:
                await self._listen_once()
                wait = RECONNECT[0]
            except DOWN as exc:
                log.warning("key_notifications_down", error=repr(exc)[:300], retry_in=wait)
            me.notify(_Listening(up=False))
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT[1])

    async def _listen_once(self) -> None:
        db = await asyncpg.connect(self._url, timeout=5)
        lost = asyncio.Event()
        db.add_termination_listener(lambda _: lost.set())
        try:
            me = self.context.self_ref

            def heard(_db: object, _pid: int, _channel: str, key_id: str) -> None:
                me.notify(_Heard(key_id))

            await db.add_listener(KEYS_CHANNEL, heard)
            me.notify(_Listening(up=True))
            me.notify(_Heard(None))  # what changed while nobody listened is unknown
            log.info("key_notifications_listening")
            while not lost.is_set():
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        await lost.wait()
                except TimeoutError:
                    await db.fetchval("SELECT 1", timeout=KEEPALIVE)  # a silent death shows
            raise ConnectionError("the listening connection was closed")
        finally:
            if not db.is_closed():
                db.terminate()

    def introspect(self) -> dict[str, Any]:
        return {
            "backend": "postgresql",
            "listening": self.listening,
            "notifications": self.notifications,
            "reconnections": self.reconnections,
            "queries": self.queries,
            "failures": self.failures,
        }


class BlockingPgKeyStore(BlockingConnection):
    """The PostgreSQL store with the SQLite KeyStore's blocking methods, for the CLI."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._keys = PgKeys(self.db)

    def create(self, scopes: KeyScopes) -> tuple[KeyRecord, str]:
        return self.run(self._keys.create(scopes))

    def get(self, key_id: str) -> KeyRecord | None:
        return self.run(self._keys.get(key_id))

    def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        return self.run(self._keys.list(include_revoked=include_revoked))

    def revoke(self, key_id: str) -> KeyRecord:
        return self.run(self._keys.revoke(key_id))

    def rotate(self, key_id: str) -> tuple[KeyRecord, str]:
        return self.run(self._keys.rotate(key_id))
