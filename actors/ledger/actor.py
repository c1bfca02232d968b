"""UsageLedgerActor: collects one usage record per completed request and writes them in
batches through LedgerWriterActor (SQLite, on its own thread) or PgLedgerWriterActor
(PostgreSQL, shared by a fleet, with a local spill file: actors.ledger.pgstore).

Records arrive as notices and wait in memory until `batch_size` have come or
`flush_interval` has passed; one batch at a time is written, in a task, never inside a
handler. A stop (SIGTERM) writes what is left before the writer stops, so a shutdown loses
nothing. A batch the writer could not write goes back in the buffer and is tried again.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from actors.kernel import ActorDead, ActorRef, AskTimeout, SyncActor, ask_settled, settle_reply
from actors.ledger.store import Summarize, UsageRecord, WriteBatch

log = structlog.get_logger("actors.ledger.actor")

WRITE_TIMEOUT = 30.0
MAX_BACKLOG = 1_000_000  # records kept while the writer fails; beyond, the oldest are dropped


class LedgerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        description="usage records: a SQLite file, or a postgresql:// URL shared by a fleet"
    )
    spill: str | None = Field(
        None,
        description="with PostgreSQL: the local SQLite file records wait in while it is down "
        "(default: usage-spill.db in $STATE_DIRECTORY, else ~/.local/state/citadel-gateway)",
    )

    def spill_path(self) -> Path:
        if self.spill is not None:
            return Path(self.spill)
        state = os.environ.get("STATE_DIRECTORY")  # systemd's StateDirectory=
        base = Path(state.split(":")[0]) if state else Path.home() / ".local/state/citadel-gateway"
        return base / "usage-spill.db"

    batch_size: int = Field(200, ge=1, description="records written in one transaction")
    flush_interval: float = Field(0.5, gt=0, description="seconds a record may wait in memory")


@dataclass(frozen=True, slots=True)
class Flush:
    """Tell (from the actor's own ticker): write what has waited `flush_interval`."""


@dataclass(frozen=True, slots=True)
class _Written:
    """Self-notice: the batch in flight was written (`ok`), or not and is handed back."""

    batch: list[UsageRecord]
    ok: bool


class UsageLedgerActor(SyncActor):
    """Receiving a record costs an append in the sender's task (a SyncActor); writes run in a
    task of their own, one batch at a time, their outcome coming back as a message, so no
    handler ever waits on the disk."""

    def __init__(
        self, writer: ActorRef, *, batch_size: int = 200, flush_interval: float = 0.5
    ) -> None:
        self._writer = writer
        self._batch_size = batch_size
        self._interval = flush_interval
        self._buffer: list[UsageRecord] = []
        self._writing: asyncio.Task[list[UsageRecord] | None] | None = None
        self._drained: list[asyncio.Future[None]] = []  # Summarize, waiting for the writes
        self._stopping = False  # on_stop takes over the batch in flight
        self.written = 0
        self.dropped = 0
        self.write_failures = 0  # batches the writer could not write (each tried again)

    async def on_start(self) -> None:
        self.context.spawn_task(self._ticker(), name="ledger-flush")

    async def _ticker(self) -> None:
        ref = self.context.self_ref
        while True:
            await asyncio.sleep(self._interval)
            if self._buffer:
                ref.notify(Flush())

    async def on_stop(self) -> None:
        """Write everything before the writer (an earlier sibling, still running) stops."""
        self._stopping = True
        if self._writing is not None:
            failed = await self._writing  # it sends no notice now: its outcome is taken here
            if failed:
                self._buffer = failed + self._buffer
        if self._buffer:
            batch, self._buffer = self._buffer, []
            failed = await self._write(batch)
            if failed:
                log.error("usage_ledger_records_lost_at_stop", records=len(failed))

    def handle(self, message: Any) -> Any:
        match message:
            case UsageRecord():
                self._buffer.append(message)
                if len(self._buffer) >= self._batch_size:
                    self._start_write()
                return None
            case Flush():
                self._start_write()
                return None
            case _Written(batch=batch, ok=ok):
                self._writing = None
                if ok:
                    self.written += len(batch)
                else:
                    self.write_failures += 1
                    self._keep(batch)
                # Go on while a Summarize waits for everything, or a full batch is waiting;
                # after a failure, the ticker tries again and a waiting Summarize gets what
                # is on disk.
                if ok and self._buffer and (self._drained or len(self._buffer) >= self._batch_size):
                    self._start_write()
                else:
                    self._wake_drained()
                return None
            case Summarize():
                return self._summary(message)
        return super().handle(message)

    def _start_write(self) -> None:
        if self._writing is not None or not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        me = self.context.self_ref

        async def write() -> list[UsageRecord] | None:
            failed = await self._write(batch)
            if not self._stopping:
                me.notify(_Written(batch, ok=failed is None))
            return failed

        self._writing = self.context.spawn_task(write(), name="ledger-write")

    async def _write(self, batch: list[UsageRecord]) -> list[UsageRecord] | None:
        """Write one batch; the batch back if it could not be written."""
        try:
            # SQLite's writer answers when the batch is on disk; PostgreSQL's defers its reply.
            await ask_settled(self._writer, WriteBatch(batch), timeout=WRITE_TIMEOUT)
        except (ActorDead, AskTimeout, OSError, sqlite3.Error) as exc:
            log.error("usage_ledger_write_failed", records=len(batch), error=repr(exc))
            return batch
        return None

    def _keep(self, batch: list[UsageRecord]) -> None:
        """A failed batch goes back in front, to be tried again; past MAX_BACKLOG the oldest
        records are dropped."""
        self._buffer = batch + self._buffer
        if len(self._buffer) > MAX_BACKLOG:
            excess = len(self._buffer) - MAX_BACKLOG
            self.dropped += excess
            del self._buffer[:excess]
            log.error("usage_ledger_records_dropped", records=excess)

    def _wake_drained(self) -> None:
        for waiter in self._drained:
            settle_reply(waiter)
        self._drained.clear()

    def _summary(self, message: Summarize) -> asyncio.Future[Any]:
        """A deferred reply: once every record received so far has been written (or a write
        has failed), the writer's summary."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._writing is None and not self._buffer:
            drained.set_result(None)
        else:
            self._drained.append(drained)
            self._start_write()
        writer = self._writer

        async def summarize() -> None:
            try:
                await drained
                answer = await ask_settled(writer, message, timeout=WRITE_TIMEOUT)
                settle_reply(reply, result=answer)
            except Exception as exc:  # noqa: BLE001 - to the asker, never a crash of the ledger
                settle_reply(reply, error=exc)

        self.context.spawn_task(summarize(), name="ledger-summary")
        return reply

    def introspect(self) -> dict[str, Any]:
        return {
            "backlog": len(self._buffer),
            "writing": self._writing is not None,
            "written": self.written,
            "dropped": self.dropped,
            "write_failures": self.write_failures,
        }
