"""What ends a relayed stream from outside its loop: its upstream falling silent too long
(IdleWatchdog), or the gateway shutting down (StreamStop records why, then closes the
upstream response, which wakes the pending read)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from actors.backend.actor import Outcome
from gateway.http.errors import GatewayError


class IdleWatchdog:
    """Calls `on_idle` when a stream's upstream falls silent for `idle` seconds.

    A chunk only stamps the time; one timer per stream re-arms itself when it finds the stream
    was active, so the cost per chunk is an attribute store, not a timer reschedule.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_on_idle", "last")

    def __init__(self, idle: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._on_idle = on_idle
        self.last = self._loop.time()
        self._handle = self._loop.call_at(self.last + idle, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        deadline = self.last + self._idle
        if self._loop.time() >= deadline:
            self._on_idle()
        else:
            self._handle = self._loop.call_at(deadline, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class StreamStop:
    """Ends a stream from outside its loop (idle too long, the gateway shutting down): records
    why, then closes the upstream response, which wakes the pending read with an error that
    the loop then reports as this reason instead of as a cut."""

    __slots__ = ("_close", "reason")

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self.reason: tuple[GatewayError, Outcome] | None = None

    def stop(self, error: GatewayError, outcome: Outcome) -> None:
        if self.reason is None:
            self.reason = (error, outcome)
            self._close()
