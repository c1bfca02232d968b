"""The usage ledger in PostgreSQL, for a fleet, and PgLedgerWriterActor, which owns it.

Every gateway writes its records to one `usage` table, in batches (one round trip each:
`executemany` in a transaction), each with its gateway's own request id (`record_id`, the
primary key: a batch written twice is written once) and its instance (host:pid).

Nothing is lost while PostgreSQL is down or slow: a batch it does not take within
`WRITE_TIMEOUT` goes to a local SQLite spill file (durable when the write returns), and
while the spill holds anything, new batches go there too, so that the replay keeps their
order. A task replays the spill, oldest first, as soon as the database takes writes again,
and forgets what it replayed; a replay cut short is written again and ignored (the primary
key), so each record lands exactly once. At a stop (SIGTERM), UsageLedgerActor hands this
writer what it holds, which goes to PostgreSQL or to the spill: never dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog

from actors.kernel import SyncActor, settle_reply
from actors.ledger.store import (
    FIELDS,
    Group,
    LedgerStore,
    Summarize,
    UsageRecord,
    WriteBatch,
    summary_row,
)
from actors.postgres.pool import DOWN, BlockingConnection, close_pool, connection

log = structlog.get_logger("actors.ledger.pgstore")

WRITE_TIMEOUT = 2.0  # seconds PostgreSQL has to take a batch before it goes to the spill
READ_TIMEOUT = 30.0
REPLAY_BATCH = 500
REPLAY_EVERY = (0.2, 5.0)  # the replay's backoff while the database refuses: first, longest
_BOOLEAN = {"usage_estimated", "cached"}
_INSERT = (
    f"INSERT INTO usage ({', '.join(FIELDS)}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, len(FIELDS) + 1))}) ON CONFLICT (record_id) DO NOTHING"
)
GROUPS = {
    "key": "key_id",
    "model": "model",
    "backend": "backend",
    "day": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
T = TypeVar("T")


def _row(record: UsageRecord) -> tuple[Any, ...]:
    values = astuple(record)
    return tuple(
        bool(value) if name in _BOOLEAN else value
        for name, value in zip(FIELDS, values, strict=True)
    )


async def append(db: Any, records: list[UsageRecord]) -> None:
    """One transaction: all of the batch, or none (a record already there is skipped)."""
    async with connection(db) as conn, conn.transaction():
        await conn.executemany(_INSERT, [_row(record) for record in records])


async def summary(
    db: Any, by: tuple[Group, ...], since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    columns = [f"{GROUPS[group]} AS {group}" for group in by]
    where, args = [], []
    if since is not None:
        args.append(since)
        where.append(f"ts >= ${len(args)}")
    if until is not None:
        args.append(until)
        where.append(f"ts < ${len(args)}")
    query = (
        f"SELECT {', '.join([*columns, ''])}COUNT(*), SUM(prompt_tokens), "
        "SUM(completion_tokens), COUNT(*) FILTER (WHERE status >= 400), AVG(latency_ms), "
        "COUNT(*) FILTER (WHERE usage_estimated), COUNT(*) FILTER (WHERE cached), "
        "SUM(saved_tokens) FROM usage"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + (f" GROUP BY {', '.join(by)} ORDER BY {', '.join(by)}" if by else "")
    )
    rows = await db.fetch(query, *args, timeout=READ_TIMEOUT)
    return [summary_row(by, tuple(row)) for row in rows]


@dataclass(frozen=True, slots=True)
class _Wrote:
    """Self-notice: records written to PostgreSQL (`replayed`: from the spill)."""

    records: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class _Spilled:
    """Self-notice: records appended to the spill (while the database is down)."""

    records: int


@dataclass(frozen=True, slots=True)
class _Down:
    """Self-notice: the database refused a write."""

    error: str


@dataclass(frozen=True, slots=True)
class _SpillEmpty:
    """Self-notice: the replay found the spill empty."""


class PgLedgerWriterActor(SyncActor):
    """Writes batches to PostgreSQL or, when it is down or slow, to the spill file; replays
    the spill when it is back. The spill's SQLite connection lives on one thread of its own."""

    def __init__(self, url: str, spill: str | Path) -> None:
        self._url = url
        self._spill_path = Path(spill)
        self._pool: asyncpg.Pool | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-spill")
        self._spill: LedgerStore | None = None
        self.spilled = 0  # records in the spill file now
        self.written = 0
        self.replayed = 0
        self.down_since: float | None = None  # the database failed a write: since when

    async def on_start(self) -> None:
        self._pool = await asyncpg.create_pool(self._url, min_size=0, max_size=4, timeout=5)
        self._spill = await self._on_thread(lambda: LedgerStore(self._spill_path))
        spill = self._spill
        self.spilled = await self._on_thread(spill.count)
        if self.spilled:
            log.info("usage_spill_found", records=self.spilled, path=str(self._spill_path))
        self.context.spawn_task(self._replay(), name="ledger-replay")

    async def on_stop(self) -> None:
        await self._close()

    async def on_failure(self, error: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await close_pool(pool)
        if self._spill is not None:
            spill, self._spill = self._spill, None
            await self._on_thread(spill.close)
        self._thread.shutdown(wait=True)

    async def _on_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def handle(self, message: Any) -> Any:
        match message:
            case WriteBatch(records=records):
                return self._deferred(lambda: self._write(records))
            case Summarize(by=by, since=since, until=until):
                pool = self._pool
                assert pool is not None
                return self._deferred(lambda: summary(pool, by, since, until))
            case _Wrote(records=count, replayed=False):
                self.written += count
            case _Wrote(records=count, replayed=True):
                self.replayed += count
                self.spilled = max(0, self.spilled - count)
                self._back_if_empty()
            case _Spilled(records=count):
                self.spilled += count
            case _SpillEmpty():
                self.spilled = 0
            case _Down(error=error):
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning("usage_database_down", error=error)
            case _:
                return super().handle(message)
        return None

    def _back_if_empty(self) -> None:
        if not self.spilled and self.down_since is not None:
            log.info(
                "usage_database_back",
                replayed=self.replayed,
                down_for=time.time() - self.down_since,
            )
            self.down_since = None

    def _deferred(self, work: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                settle_reply(reply, result=await work())
            except Exception as exc:  # noqa: BLE001 - to the asker (the ledger keeps the batch)
                settle_reply(reply, error=exc)

        self.context.spawn_task(run(), name="ledger-pg")
        return reply

    async def _write(self, records: list[UsageRecord]) -> int:
        """To PostgreSQL if it takes the batch in time and nothing waits in the spill;
        otherwise to the spill. Raises only if neither takes it."""
        pool, me = self._pool, self.context.self_ref
        if pool is not None and not self.spilled:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await append(pool, records)
            except DOWN as exc:
                me.notify(_Down(repr(exc)[:300]))
            else:
                me.notify(_Wrote(len(records)))
                return len(records)
        spill = self._spill
        assert spill is not None
        await self._on_thread(lambda: spill.append(records))
        me.notify(_Spilled(len(records)))  # before the reply: the next batch sees it
        return len(records)

    async def _replay(self) -> None:
        """For the actor's life: what the spill holds, to PostgreSQL, oldest first."""
        wait = REPLAY_EVERY[0]
        while True:
            await asyncio.sleep(wait)
            if not self.spilled:
                wait = REPLAY_EVERY[0]
                continue
            try:
                await self._replay_batch()
                wait = 0.0 if self.spilled else REPLAY_EVERY[0]
            except DOWN:
                wait = min(max(wait, REPLAY_EVERY[0]) * 2, REPLAY_EVERY[1])

    async def _replay_batch(self) -> None:
        spill, pool = self._spill, self._pool
        assert spill is not None
        assert pool is not None
        me = self.context.self_ref
        oldest = await self._on_thread(lambda: spill.oldest(REPLAY_BATCH))
        if not oldest:
            me.notify(_SpillEmpty())
            return
        async with asyncio.timeout(WRITE_TIMEOUT * 5):
            await append(pool, [record for _, record in oldest])
        last = oldest[-1][0]
        await self._on_thread(lambda: spill.forget(last))
        me.notify(_Wrote(len(oldest), replayed=True))

    def introspect(self) -> dict[str, Any]:
        return {
            "backend": "postgresql",
            "written": self.written,
            "spilled": self.spilled,
            "replayed": self.replayed,
            "database_down": self.down_since is not None,
        }


class BlockingPgLedger(BlockingConnection):
    """The PostgreSQL ledger's summary for the CLI."""

    def summary(
        self, by: tuple[Group, ...], since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        return self.run(summary(self.db, by, since, until))
