"""UsageLedgerActor: collects one usage record per completed request and writes them in
batches through LedgerWriterActor (SQLite, on its own thread).

Records arrive as tells and wait in memory until `batch_size` have come or `flush_interval`
has passed; a stop (SIGTERM) writes what is left before the writer stops, so a shutdown
loses nothing. A batch the writer could not write stays in the buffer and is tried again.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from actors.kernel import Actor, ActorDead, ActorRef, AskTimeout
from actors.ledger_store import Summarize, UsageRecord, WriteBatch

log = structlog.get_logger("actors.ledger")

WRITE_TIMEOUT = 30.0
MAX_BACKLOG = 1_000_000  # records kept while the writer fails; beyond, the oldest are dropped


class LedgerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="the SQLite file of usage records")
    batch_size: int = Field(200, ge=1, description="records written in one transaction")
    flush_interval: float = Field(0.5, gt=0, description="seconds a record may wait in memory")


@dataclass(frozen=True, slots=True)
class Flush:
    """Ask: write every record received so far; replies with how many were written."""


class UsageLedgerActor(Actor):
    def __init__(
        self, writer: ActorRef, *, batch_size: int = 200, flush_interval: float = 0.5
    ) -> None:
        self._writer = writer
        self._batch_size = batch_size
        self._interval = flush_interval
        self._buffer: list[UsageRecord] = []
        self.written = 0
        self.dropped = 0

    async def on_start(self) -> None:
        self.context.spawn_task(self._ticker(), name="ledger-flush")

    async def _ticker(self) -> None:
        ref = self.context.self_ref
        while True:
            await asyncio.sleep(self._interval)
            if self._buffer:
                ref.notify(Flush())

    async def on_stop(self) -> None:
        await self._flush()  # the writer is an earlier sibling: it is still running

    async def receive(self, message: Any) -> Any:
        match message:
            case UsageRecord():
                self._buffer.append(message)
                if len(self._buffer) >= self._batch_size:
                    await self._flush()
                return None
            case Flush():
                return await self._flush()
            case Summarize():
                await self._flush()
                return await self._writer.ask(message, timeout=WRITE_TIMEOUT)
        return await super().receive(message)

    async def _flush(self) -> int:
        if not self._buffer:
            return 0
        batch, self._buffer = self._buffer, []
        try:
            await self._writer.ask(WriteBatch(batch), timeout=WRITE_TIMEOUT)
        except (ActorDead, AskTimeout, OSError, sqlite3.Error) as exc:
            log.error("usage_ledger_write_failed", records=len(batch), error=repr(exc))
            self._buffer = batch + self._buffer
            if len(self._buffer) > MAX_BACKLOG:
                excess = len(self._buffer) - MAX_BACKLOG
                self.dropped += excess
                del self._buffer[:excess]
                log.error("usage_ledger_records_dropped", records=excess)
            return 0
        self.written += len(batch)
        return len(batch)

    def introspect(self) -> dict[str, Any]:
        return {"backlog": len(self._buffer), "written": self.written, "dropped": self.dropped}
