"""UpstreamPool: a replica's keep-alive connections, at most `max_connections` of them.

A request takes the most recently used idle connection (a hot few stay warm, the rest age
out), or opens one if there is room, or waits its turn for one. Idle connections are closed
after `keepalive` seconds by one timer per pool, not one per connection. Each request has
one deadline, armed once as a timer on its connection: it covers the wait for the answer and
the reading of its body, as aiohttp's `total` did.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL

from actors.backend.pool.connection import UpstreamConnection
from actors.backend.pool.errors import ConnectFailed
from actors.backend.pool.response import UpstreamResponse


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_connections: int
    keepalive: float  # seconds an idle connection is kept
    connect_timeout: float  # seconds to open a connection (TCP and TLS)


class UpstreamPool:
    """Connections to one replica (`base_url`: scheme, host, port and a path prefix)."""

    __slots__ = (
        "_authority",
        "_closed",
        "_connections",
        "_host",
        "_idle",
        "_loop",
        "_port",
        "_prefix",
        "_settings",
        "_ssl",
        "_sweeper",
        "_waiters",
    )

    def __init__(self, base_url: str, settings: PoolSettings) -> None:
        url = URL(base_url)
        self._settings = settings
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._authority = url.raw_authority
        self._prefix = url.raw_path.rstrip("/")
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._loop = asyncio.get_running_loop()
        self._idle: deque[UpstreamConnection] = deque()  # oldest first
        self._connections: set[UpstreamConnection] = set()  # counted: open, or opening
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def post(
        self, path: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> UpstreamResponse:
        """POST `body` to `path`: the answer once its headers are in, its body to be read
        within the same `timeout`, then released (reusable) or closed. Raises TimeoutError,
        ConnectFailed, ConnectionLost or MalformedResponse."""
        request = self._request(path, headers, body)
        loop = self._loop
        deadline = loop.time() + timeout
        connection = self._idle_connection()
        if connection is None:
            connection = await self._connection(deadline)
        timer = loop.call_at(deadline, connection.expire)
        try:
            connection.send(request)
            status = await connection.head()
        except BaseException:
            timer.cancel()
            self.drop(connection)
            raise
        return UpstreamResponse(self, connection, status, timer)

    async def close(self) -> None:
        """Close every connection, busy ones included (their requests fail), and refuse new
        requests."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._connections):
            self.drop(connection)
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- for UpstreamResponse -------------------------------------------------------------

    def put_back(self, connection: UpstreamConnection) -> None:
        """A request is done with `connection`: kept for the next if it can be reused."""
        if self._closed or not connection.reusable:
            self.drop(connection)
            return
        connection.finish(self._loop.time())
        self._idle.append(connection)
        if self._sweeper is None:
            self._arm_sweeper(connection.idle_since)
        self._wake_one()

    def drop(self, connection: UpstreamConnection) -> None:
        """Close `connection` and stop counting it."""
        connection.close()
        if not connection.dropped:
            connection.dropped = True
            self._connections.discard(connection)
            self._wake_one()

    # -- taking a connection --------------------------------------------------------------

    def _request(self, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        # A CR or LF in a name or value would split it into headers of its own (or a second
        # request): each line must hold exactly one of each.
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise ValueError("a header for the model service holds a line break")
        head = (
            f"POST {self._prefix}{path} HTTP/1.1\r\nHost: {self._authority}\r\n"
            f"Content-Length: {len(body)}\r\n{lines}\r\n"
        )
        return head.encode() + body

    def _idle_connection(self) -> UpstreamConnection | None:
        idle = self._idle
        if not idle:
            return None
        oldest_kept = self._loop.time() - self._settings.keepalive
        while idle:
            connection = idle.pop()
            if connection.lost or connection.idle_since < oldest_kept:
                self.drop(connection)
                continue
            return connection
        return None

    async def _connection(self, deadline: float) -> UpstreamConnection:
        """A connection for a request with no idle one to take: a new one if there is room,
        or the next one released, by `deadline`."""
        while True:
            if self._closed:
                raise ConnectFailed("the replica's pool is closed")
            if len(self._connections) < self._settings.max_connections:
                return await self._connect(deadline)
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the wake-up was ours: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
            connection = self._idle_connection()
            if connection is not None:
                return connection

    async def _connect(self, deadline: float) -> UpstreamConnection:
        loop = self._loop
        connection = UpstreamConnection(loop)
        self._connections.add(connection)  # its room is held while it opens
        limit = min(deadline, loop.time() + self._settings.connect_timeout)
        try:
            async with asyncio.timeout_at(limit):
                await loop.create_connection(
                    lambda: connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            self.drop(connection)
            raise
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            self.drop(connection)
            raise ConnectFailed(f"could not connect to {self._authority}: {exc}") from exc
        except BaseException:
            self.drop(connection)
            raise
        if self._closed:
            self.drop(connection)
            raise ConnectFailed("the replica's pool is closed")
        return connection

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- keep-alive expiry ----------------------------------------------------------------

    def _arm_sweeper(self, oldest: float) -> None:
        self._sweeper = self._loop.call_at(oldest + self._settings.keepalive, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        idle = self._idle
        oldest_kept = self._loop.time() - self._settings.keepalive
        while idle and (idle[0].lost or idle[0].idle_since <= oldest_kept):
            self.drop(idle.popleft())
        if idle and not self._closed:
            self._arm_sweeper(idle[0].idle_since)
