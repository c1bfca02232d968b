"""UpstreamResponse: a replica's answer once its headers are in, its body still to come."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from actors.backend.pool.connection import UpstreamConnection
from actors.backend.pool.errors import ConnectionLost

if TYPE_CHECKING:
    from actors.backend.pool.pool import UpstreamPool


class UpstreamResponse:
    """Read the body (`read`, whole; or `readany`, as it arrives), then `release` the
    connection for the next request or `close` it (the replica stops generating)."""

    __slots__ = ("_connection", "_pool", "_timer", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        connection: UpstreamConnection,
        status: int,
        timer: asyncio.TimerHandle,
    ) -> None:
        self._pool = pool
        self._connection: UpstreamConnection | None = connection
        self._timer = timer
        self.status = status

    async def read(self) -> bytes:
        return await self._open().read()

    async def readany(self) -> bytes:
        """The bytes that arrived since the last call (waiting for some); b"" at the end."""
        return await self._open().readany()

    def release(self) -> None:
        """Done: the connection goes back to the pool if the whole answer was read and the
        replica keeps it open, else it is closed. Idempotent, like `close`."""
        self._end(self._pool.put_back)

    def close(self) -> None:
        """Close the connection now; a read waiting on it raises ConnectionLost."""
        self._end(self._pool.drop)

    def _end(self, hand_to: Callable[[UpstreamConnection], None]) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            self._timer.cancel()
            hand_to(connection)

    def _open(self) -> UpstreamConnection:
        if self._connection is None:
            raise ConnectionLost("the answer was already released")
        return self._connection
