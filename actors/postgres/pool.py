"""What the PostgreSQL-backed stores share: the errors that mean the database is down or
slow, a pool's connection for a block, closing a pool within a bound, and one blocking
connection for the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg

# The database is unreachable, refused, or too slow: a store failure, never a crash.
DOWN = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class connection:
    """A pool's connection for the block (a plain connection is used as it is)."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._acquired: Any = None

    async def __aenter__(self) -> Any:
        if isinstance(self._db, asyncpg.Pool):
            self._acquired = await self._db.acquire()
            return self._acquired
        return self._db

    async def __aexit__(self, *exc: object) -> None:
        if self._acquired is not None:
            await self._db.release(self._acquired)


async def close_pool(pool: asyncpg.Pool, timeout: float = 5.0) -> None:
    """Close gracefully within `timeout`, then terminate what is left."""
    try:
        async with asyncio.timeout(timeout):
            await pool.close()
    except TimeoutError:
        pool.terminate()


T = TypeVar("T")


class BlockingConnection:
    """One connection on a private event loop, for the command line's blocking calls."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self.db = self.run(asyncpg.connect(url, timeout=10))

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(work)

    def close(self) -> None:
        try:
            self.run(self.db.close())
        finally:
            self._loop.close()
