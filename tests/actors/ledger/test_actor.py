"""The usage ledger on its own: records batched off the loop, summaries that wait for the
writes, nothing lost at stop. Its writer is the real pykka thread on a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pykka

from actors.kernel import ActorSystem, ChildSpec, PykkaHost, ask_settled
from actors.ledger.actor import UsageLedgerActor
from actors.ledger.store import LedgerWriterActor, Summarize, UsageRecord


def record(request_id: str, key_id: str, *, status: int = 200) -> UsageRecord:
    return UsageRecord(
        ts=time.time(),
        request_id=request_id,
        key_id=key_id,
        model="m",
        backend="m#0",
        endpoint="/v1/chat/completions",
        prompt_tokens=3,
        completion_tokens=5,
        status=status,
        latency_ms=1.0,
        ttft_ms=None,
        usage_estimated=False,
    )


async def ledger_system(path: Path, *, batch_size: int) -> ActorSystem:
    system = ActorSystem()
    writer = await system.spawn(
        ChildSpec("writer", lambda: PykkaHost(lambda: LedgerWriterActor.start(path)))
    )
    # A flush interval far beyond the test: only a full batch, a Summarize or the stop writes.
    await system.spawn(
        ChildSpec(
            "ledger",
            lambda: UsageLedgerActor(writer, batch_size=batch_size, flush_interval=3600),
        )
    )
    return system


def written(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT request_id FROM usage ORDER BY ts")]
    finally:
        db.close()


async def test_a_summary_waits_for_every_record_received_before_it(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    system = await ledger_system(path, batch_size=1000)
    try:
        ledger = system.lookup("ledger")
        for index in range(5):
            ledger.notify(record(f"r{index}", "a" if index < 3 else "b", status=200 + index))
        rows = await ask_settled(ledger, Summarize(by=("key",)), timeout=10)
        assert [(row["key"], row["requests"]) for row in rows] == [("a", 3), ("b", 2)]
        assert sum(row["prompt_tokens"] for row in rows) == 15
    finally:
        await system.shutdown()
        pykka.ActorRegistry.stop_all()


async def test_records_still_buffered_at_stop_are_written(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    system = await ledger_system(path, batch_size=1000)
    ledger = system.lookup("ledger")
    for index in range(7):
        ledger.notify(record(f"r{index}", "a"))
    await system.shutdown()
    pykka.ActorRegistry.stop_all()
    assert sorted(written(path)) == [f"r{index}" for index in range(7)]
