"""A lean Redis client for the rate limiter's path: one pipelined connection speaking RESP2,
and the few commands the limiter sends (its two scripts, and GET).

Why not redis-py's asyncio client here: measured, one EVALSHA round trip through it costs
112-165 µs of this process's time against 14-22 µs for the same bytes written and read on
a plain connection (docs/benchmarks.md, "What rate limits cost"). Its connection pool,
command packing and reply parsing are Python on every call; at two calls a request, that
was most of what limits in Redis cost. The rest of the gateway (the response cache's store)
keeps redis-py, off this path.

Every request's commands share one connection, pipelined: Redis answers a connection's
commands in the order they came, so each reply settles the oldest waiting future, and a
request waits for Redis only, never for a free connection. A call that outlives its timeout
closes the connection (a server that stopped answering is not sent more), failing what was
in flight on it; the next call connects again.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import cast
from urllib.parse import unquote, urlsplit

_INCOMPLETE = object()  # not enough bytes yet for a whole reply


class RespError(Exception):
    """Redis answered a command with an error."""


class RespConnectionError(ConnectionError):
    """The connection to Redis failed, closed, or spoke something other than RESP."""


class RespTimeout(TimeoutError):
    """Redis did not answer within the client's timeout."""


def encode(args: tuple[bytes | str | int | float, ...]) -> bytes:
    """A command as a RESP array of bulk strings (numbers as Redis reads them back)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        else:
            data = (repr(arg) if isinstance(arg, float) else str(arg)).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def parse(buffer: bytes | bytearray, pos: int) -> tuple[object, int]:
    """One reply from `pos`: (the value, where the next starts), or (_INCOMPLETE, pos). An
    error reply is a RespError value (inside an array too); a nil is None."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind, line, after = buffer[pos], bytes(buffer[pos + 1 : end]), end + 2
    if kind == 0x2B:  # +simple string
        return line.decode(), after
    if kind == 0x2D:  # -error
        return RespError(line.decode(errors="replace")), after
    if kind == 0x3A:  # :integer
        return int(line), after
    if kind == 0x24:  # $bulk string
        length = int(line)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            return _INCOMPLETE, pos
        return bytes(buffer[after : after + length]), after + length + 2
    if kind == 0x2A:  # *array
        count = int(line)
        if count < 0:
            return None, after
        items: list[object] = []
        for _ in range(count):
            item, after = parse(buffer, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    raise RespConnectionError(f"not a RESP reply (type byte {kind!r})")


class _Connection(asyncio.Protocol):
    """One connection: commands written as they come, replies matched to them in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: deque[asyncio.Future[object]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes) -> asyncio.Future[object]:
        if self.closed or self._transport is None:
            raise RespConnectionError("the connection to Redis is closed")
        reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting.append(reply)
        self._transport.write(payload)
        return reply

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            while pos < len(buffer):
                value, after = parse(buffer, pos)
                if value is _INCOMPLETE:
                    break
                pos = after
                if not self._waiting:
                    raise RespConnectionError("a reply to no command")
                reply = self._waiting.popleft()
                if not reply.done():  # its caller may have given up (a timeout, a cancel)
                    reply.set_result(value)
        except (RespConnectionError, ValueError) as exc:
            self.close(RespConnectionError(f"Redis spoke no RESP: {exc}"))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RespConnectionError(f"the connection to Redis was lost: {exc!r}"))

    def close(self, error: BaseException) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: BaseException) -> None:
        self.closed = True
        while self._waiting:
            reply = self._waiting.popleft()
            if not reply.done():
                reply.set_exception(error)


class Script:
    """A Lua script, sent by its SHA1 (and in full once, when Redis does not have it)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()


class RespClient:
    """The limiter's Redis: `redis://[user:password@]host[:port][/db]`, `rediss://` (TLS) or
    `unix:///path/to/socket[?db=N]`; every call bounded by `timeout` seconds."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._address = address_of(url)
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def call(self, *args: bytes | str | int | float) -> object:
        """One command's reply (an error reply raises RespError)."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        reply = await self._bounded(connection, connection.send(encode(args)))
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def run(
        self, script: Script, keys: list[str], args: list[bytes | str | int | float]
    ) -> object:
        """EVALSHA, and EVAL (which also loads it) when Redis does not know the script."""
        try:
            return await self.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return await self.call(b"EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()  # a connection on its way is not left open
        if self._connection is not None:
            self._connection.close(RespConnectionError("the client was closed"))
            self._connection = None

    async def _bounded(self, connection: _Connection, reply: asyncio.Future[object]) -> object:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._timeout, _expire, connection, reply)
        try:
            return await reply
        finally:
            timer.cancel()

    async def _connect(self) -> _Connection:
        """One connection at a time, shared by every caller that finds none."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, opening: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not opening.cancelled() and opening.exception() is None:
            self._connection = opening.result()

    async def _open(self) -> _Connection:
        address = self._address
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            if address.socket is not None:
                _, connection = await loop.create_unix_connection(_Connection, address.socket)
            else:
                context = ssl.create_default_context() if address.tls else None
                _, connection = await loop.create_connection(
                    _Connection, address.host, address.port, ssl=context
                )
            setup: list[asyncio.Future[object]] = []
            if address.password is not None:
                credentials = (
                    (address.username, address.password)
                    if address.username
                    else (address.password,)
                )
                setup.append(connection.send(encode((b"AUTH", *credentials))))
            if address.db:
                setup.append(connection.send(encode((b"SELECT", address.db))))
            for reply in setup:
                value = await reply
                if isinstance(value, RespError):
                    connection.close(RespConnectionError("setup refused"))
                    raise value
        return connection


def _expire(connection: _Connection, reply: asyncio.Future[object]) -> None:
    if not reply.done():
        connection.close(RespTimeout("Redis did not answer in time"))


class Address:
    __slots__ = ("db", "host", "password", "port", "socket", "tls", "username")

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        socket: str | None = None,
        tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
    ) -> None:
        self.host, self.port, self.socket, self.tls = host, port, socket, tls
        self.username, self.password, self.db = username, password, db


def address_of(url: str) -> Address:
    """Where `url` points (ValueError for what this client does not speak)."""
    parts = urlsplit(url)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL needs a socket path")
        db = int(query.get("db", "0"))
        return Address(socket=parts.path, username=username, password=password, db=db)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis URL is redis://, rediss:// or unix://")
    path = parts.path.strip("/")
    db = int(path) if path else int(query.get("db", "0"))
    return Address(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        tls=parts.scheme == "rediss",
        username=username,
        password=password,
        db=db,
    )
