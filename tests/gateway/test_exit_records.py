"""The exits' records in batches (gateway.upstream.exits): written on the loop's next turn,
all of a turn's together, each in its request's context or the process's (never a
neighbour's), one failure costing no other its records; `flush` writes them at once (the
shutdown's)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, cast

from structlog.contextvars import bind_contextvars, get_contextvars, reset_contextvars
from structlog.testing import capture_logs

from gateway.upstream.exchange import Exchange
from gateway.upstream.exits import ExitRecords


class Recorded:
    """Stands in for an Exchange: what `write_records` saw (its contextvars) and when."""

    def __init__(self, request_id: str, written: list[tuple[str, float, dict[str, Any]]]):
        self.request_id = request_id
        self._written = written

    def write_records(self, elapsed: float) -> None:
        if self.request_id == "broken":
            raise RuntimeError("a record that cannot be written")
        self._written.append((self.request_id, elapsed, get_contextvars()))


def deferred(records: ExitRecords, item: Recorded, elapsed: float, traced: bool) -> None:
    context = contextvars.copy_context() if traced else None
    records.defer(cast(Exchange, item), elapsed, context)


async def test_a_turn_s_exits_are_written_together_on_the_next_turn() -> None:
    written: list[tuple[str, float, dict[str, Any]]] = []
    records = ExitRecords()
    for number in range(3):
        deferred(records, Recorded(f"r{number}", written), number / 10, traced=False)
    assert written == []  # not during the turn of the exits
    assert len(records) == 3
    await asyncio.sleep(0)
    expected = [("r0", 0.0), ("r1", 0.1), ("r2", 0.2)]
    assert [(rid, elapsed) for rid, elapsed, _ in written] == expected
    assert len(records) == 0


async def test_each_record_is_written_in_its_own_context_never_a_neighbour_s() -> None:
    bind_contextvars(worker=3)
    records = ExitRecords()  # made with the process's context
    written: list[tuple[str, float, dict[str, Any]]] = []
    # The first exit of the turn is a traced request's: the turn's write is scheduled from
    # its context, yet the untraced exits after it are written without its trace id.
    bound = bind_contextvars(trace_id="a" * 32)
    deferred(records, Recorded("traced", written), 0.1, traced=True)
    deferred(records, Recorded("untraced", written), 0.2, traced=False)
    reset_contextvars(**bound)
    await asyncio.sleep(0)
    seen = {rid: context for rid, _, context in written}
    assert seen == {"traced": {"worker": 3, "trace_id": "a" * 32}, "untraced": {"worker": 3}}


async def test_a_record_that_fails_costs_the_others_nothing_and_is_logged() -> None:
    records = ExitRecords()
    written: list[tuple[str, float, dict[str, Any]]] = []
    with capture_logs() as logs:
        for rid in ("before", "broken", "after"):
            deferred(records, Recorded(rid, written), 0.0, traced=False)
        await asyncio.sleep(0)
    assert [rid for rid, _, _ in written] == ["before", "after"]
    failed = [line for line in logs if line["event"] == "exit_records_failed"]
    assert [line["request_id"] for line in failed] == ["broken"]


async def test_flush_writes_what_is_pending_now_and_only_once() -> None:
    records = ExitRecords()
    written: list[tuple[str, float, dict[str, Any]]] = []
    deferred(records, Recorded("last", written), 0.0, traced=False)
    records.flush()  # the shutdown's, before the actors stop
    assert [rid for rid, _, _ in written] == ["last"]
    await asyncio.sleep(0)  # the turn's own write then finds nothing left
    assert [rid for rid, _, _ in written] == ["last"]
