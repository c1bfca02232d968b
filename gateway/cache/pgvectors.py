"""The semantic cache's shared vector store: PostgreSQL with pgvector, for a fleet (a question
answered by one gateway is found by every gateway on that database).

One table per embedding size (`citadel_semantic_<dims>`: pgvector indexes need a fixed
size), with an HNSW index for similarity (chosen by measurement: ~1 ms at 100k entries,
docs/benchmarks.md) and a B-tree on the partition: PostgreSQL's planner takes whichever
suits the partition's size. A search that the HNSW index answers approximately can only miss
a neighbour, never return another partition's (the partition is a filter).

Like the exact cache's store, an optimisation only: every call has a deadline, a failure or
a slow call is a miss (counted), and the store is left alone for `retry_after` seconds after
one; asyncpg's pool reconnects when the database is back (tested by stopping it). Inserts
run in the background, a bounded number at a time; expired rows are deleted now
and then by an insert's task.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import structlog

from gateway.cache.vectorstore import Match

log = structlog.get_logger("gateway.cache.pgvectors")

MAX_PENDING_INSERTS = 256
PURGE_EVERY = 200  # inserts between two deletions of expired rows
# What a database call can raise: the server's errors, the connection's, a deadline.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Unreachable(Exception):
    """The store failed, was slow, or is resting after a failure."""


class PgVectors:
    def __init__(self, url: str, *, timeout: float, retry_after: float, ef_search: int) -> None:
        self._url, self._timeout, self._retry_after = url, timeout, retry_after
        self._ef_search = ef_search
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None
        self._tables: set[int] = set()
        self._down_until = 0.0
        self._down = False
        self._inserts: set[asyncio.Task[None]] = set()
        self._inserted = 0
        self.errors = 0

    async def nearest(self, partition: str, vector: list[float]) -> Match | None:
        """The most similar live question of the partition; Unreachable if the store is."""
        dims = len(vector)
        try:
            async with asyncio.timeout(self._timeout):
                pool = await self._ready()
                async with pool.acquire() as db, db.transaction():
                    if dims not in self._tables:  # another gateway may have made it since
                        table = f"citadel_semantic_{dims}"
                        if await db.fetchval("SELECT to_regclass($1)", table) is None:
                            return None  # nothing of this size stored anywhere yet
                        self._tables.add(dims)
                    await db.execute(f"SET LOCAL hnsw.ef_search = {int(self._ef_search)}")
                    row = await db.fetchrow(
                        "SELECT answer_key, question, "
                        "1 - (embedding <=> $1::vector) AS similarity "
                        f"FROM citadel_semantic_{dims} WHERE partition = $2 AND expires > now() "
                        "ORDER BY embedding <=> $1::vector LIMIT 1",
                        _literal(vector),
                        partition,
                    )
        except DB_ERRORS as exc:
            self._failed("search", exc)
            raise Unreachable from None
        self._recovered()
        if row is None:
            return None
        return Match(row["answer_key"], float(row["similarity"]), row["question"])

    def add(self, partition: str, vector: list[float], key: str, text: str, ttl: float) -> None:
        if len(self._inserts) >= MAX_PENDING_INSERTS or self._resting():
            return
        task = asyncio.ensure_future(self._insert(partition, vector, key, text, ttl))
        self._inserts.add(task)
        task.add_done_callback(self._inserts.discard)

    async def _insert(
        self, partition: str, vector: list[float], key: str, text: str, ttl: float
    ) -> None:
        dims = len(vector)
        self._inserted += 1
        purge = self._inserted % PURGE_EVERY == 0
        try:
            async with asyncio.timeout(self._timeout * 4):
                pool = await self._ready()
                await self._table(pool, dims)
                async with pool.acquire() as db:
                    await db.execute(
                        f"INSERT INTO citadel_semantic_{dims} "
                        "(partition, answer_key, question, embedding, expires) "
                        "VALUES ($1, $2, $3, $4::vector, now() + make_interval(secs => $5)) "
                        "ON CONFLICT (partition, answer_key) DO UPDATE SET "
                        "embedding = EXCLUDED.embedding, question = EXCLUDED.question, "
                        "expires = EXCLUDED.expires",
                        partition, key, text, _literal(vector), float(ttl),
                    )  # fmt: skip
                    if purge:
                        await db.execute(
                            f"DELETE FROM citadel_semantic_{dims} WHERE expires <= now()"
                        )
        except DB_ERRORS as exc:
            self._failed("insert", exc)
            return
        self._recovered()

    async def _ready(self) -> Any:
        if self._resting():
            raise TimeoutError("resting after a failure")
        if self._pool is None:
            self._opening = self._opening or asyncio.Lock()
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._url, min_size=1, max_size=8, timeout=self._timeout * 4
                    )
                    async with self._pool.acquire() as db:
                        await db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self._pool

    async def _table(self, pool: Any, dims: int) -> None:
        if dims in self._tables:
            return
        table = f"citadel_semantic_{dims}"
        async with pool.acquire() as db:
            await db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "partition text NOT NULL, answer_key text NOT NULL, question text NOT NULL, "
                f"embedding vector({dims}) NOT NULL, expires timestamptz NOT NULL, "
                "PRIMARY KEY (partition, answer_key))"
            )
            await db.execute(
                f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} "
                "USING hnsw (embedding vector_cosine_ops)"
            )
        self._tables.add(dims)

    def _resting(self) -> bool:
        return self._down and time.monotonic() < self._down_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self._retry_after
        if not self._down:
            self._down = True
            log.warning("semantic_store_unavailable", operation=operation, error=type(exc).__name__)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("semantic_store_available")

    async def flush(self) -> None:
        if self._inserts:
            await asyncio.wait(list(self._inserts))

    async def close(self) -> None:
        if self._inserts:
            await asyncio.wait(list(self._inserts), timeout=self._timeout * 4)
        for task in list(self._inserts):
            task.cancel()
        if self._pool is not None:
            await self._pool.close()


def _literal(vector: list[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"
