"""The replicas' HTTP/1.1 client (actors.backend.pool) against scripted servers on real
sockets: keep-alive and its limits, each way a body is framed, and each way an answer goes
wrong (cut, malformed, silent, too large), as a model server or the network may do it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import pytest

from actors.backend.pool import (
    ConnectFailed,
    ConnectionLost,
    MalformedResponse,
    PoolSettings,
    UpstreamPool,
)
from actors.backend.pool.connection import HEAD_LIMIT, PAUSE_ABOVE

BOUND = 5.0  # seconds any one step of a test may take
SETTINGS = PoolSettings(max_connections=16, keepalive=30.0, connect_timeout=2.0)
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]


class Server:
    """A TCP server whose connections run `handler`; it counts what it saw."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.peak_open = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self.closed += 1
            writer.close()


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Hold the connection, reading nothing of use, until the gateway's side closes it."""
    async with asyncio.timeout(BOUND * 2):
        await reader.read()


async def read_request(reader: asyncio.StreamReader, server: Server) -> bytes | None:
    """One request (head and body), or None at the connection's end."""
    async with asyncio.timeout(BOUND):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
    server.requests.append(request)
    return request


@asynccontextmanager
async def scripted(
    answer: Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Server]:
    server = Server(lambda r, w: answer(server, r, w))
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        with suppress(TimeoutError):
            async with asyncio.timeout(BOUND):
                await listener.wait_closed()


async def never_answering(server: Server, reader: Reader, w: Writer) -> None:
    """Reads the request, then says nothing until the gateway's side closes."""
    await read_request(reader, server)
    await until_closed(reader)


def answering_after(delay: float) -> Callable[..., Awaitable[None]]:
    """Each request answered OK, `delay` seconds after it came."""

    async def answer(server: Server, reader: Reader, w: Writer) -> None:
        while await read_request(reader, server) is not None:
            await asyncio.sleep(delay)
            w.write(OK)
            await w.drain()

    return answer


def answering(*responses: bytes) -> Callable[..., Awaitable[None]]:
    """Each request on a connection gets the next of `responses` (the last one repeats)."""

    async def answer(server: Server, reader: Reader, w: Writer) -> None:
        turn = 0
        while await read_request(reader, server) is not None:
            w.write(responses[min(turn, len(responses) - 1)])
            await w.drain()
            turn += 1

    return answer


@asynccontextmanager
async def pool_for(port: int, settings: PoolSettings = SETTINGS) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(f"http://127.0.0.1:{port}/prefix/", settings)
    try:
        yield pool
    finally:
        await pool.close()


async def post(pool: UpstreamPool, timeout: float = BOUND) -> tuple[int, bytes]:
    async with asyncio.timeout(BOUND):
        response = await pool.post("/v1/x", {"X-Test": "1"}, b'{"q":1}', timeout)
        try:
            return response.status, await response.read()
        finally:
            response.release()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


async def test_one_connection_serves_requests_in_turn_with_the_request_as_sent() -> None:
    async with scripted(answering(OK)) as server, pool_for(server.port) as pool:
        for _ in range(5):
            assert await post(pool) == (200, b'{"ok":true}')
        assert server.connections == 1
        assert pool.open_connections == pool.idle_connections == 1
    head, body = server.requests[0].split(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /prefix/v1/x HTTP/1.1",
        b"Host: 127.0.0.1:%d" % server.port,
        b"Content-Length: 7",
        b"X-Test: 1",
    ]
    assert body == b'{"q":1}'


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b'{"ok"', b":true}"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{"ok":true}',
    ],
    ids=["chunked", "after-100-continue", "lower-case-length"],
)
async def test_framed_bodies_are_read_whole_and_keep_the_connection(answer: bytes) -> None:
    async with scripted(answering(answer)) as server, pool_for(server.port) as pool:
        assert await post(pool) == (200, b'{"ok":true}')
        assert await post(pool) == (200, b'{"ok":true}')
        assert server.connections == 1


async def test_a_body_ended_by_the_connection_is_complete_and_not_reused() -> None:
    answer = b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"ok":true}'

    async def close_delimited(server: Server, reader: Reader, w: Writer) -> None:
        await read_request(reader, server)
        w.write(answer)
        await w.drain()

    async with scripted(close_delimited) as server, pool_for(server.port) as pool:
        assert await post(pool) == (200, b'{"ok":true}')
        assert await post(pool) == (200, b'{"ok":true}')
        assert server.connections == 2


async def test_connection_close_is_honoured() -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    async with scripted(answering(answer)) as server, pool_for(server.port) as pool:
        assert await post(pool) == (200, b"{}")
        assert await post(pool) == (200, b"{}")
        assert server.connections == 2
        assert pool.idle_connections == 0


async def test_a_connection_the_replica_closed_while_idle_is_not_reused() -> None:
    async def once(server: Server, reader: Reader, w: Writer) -> None:
        await read_request(reader, server)
        w.write(OK)  # keep-alive by its headers, then closed anyway (a restart, an idle cut)
        await w.drain()

    async with scripted(once) as server, pool_for(server.port) as pool:
        assert await post(pool) == (200, b'{"ok":true}')
        async with asyncio.timeout(BOUND):
            while server.closed < 1:  # noqa: ASYNC110 - the server's side, polled
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # its FIN reaches the pool's idle connection
        assert await post(pool) == (200, b'{"ok":true}')
        assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "where"),
    [
        (b"", "before answering"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "before answering"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial', "in its body"),
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ok"\r\n', "in its body"),
    ],
    ids=["nothing", "half-a-head", "short-body", "cut-chunks"],
)
async def test_an_answer_cut_short_is_a_lost_connection(answer: bytes, where: str) -> None:
    async def cut(server: Server, reader: Reader, w: Writer) -> None:
        await read_request(reader, server)
        w.write(answer)
        await w.drain()

    async with scripted(cut) as server, pool_for(server.port) as pool:
        with pytest.raises(ConnectionLost, match=where):
            await post(pool)
        assert pool.open_connections == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * HEAD_LIMIT + b"\r\n\r\n",
    ],
    ids=["not-http", "two-lengths", "bad-header", "upgrade", "huge-head"],
)
async def test_malformed_answers_are_refused_and_their_connection_dropped(answer: bytes) -> None:
    async with scripted(answering(answer)) as server, pool_for(server.port) as pool:
        with pytest.raises(MalformedResponse):
            await post(pool)
        assert pool.open_connections == 0


async def test_a_second_answer_to_one_request_spoils_the_connection() -> None:
    async with scripted(answering(OK + OK)) as server, pool_for(server.port) as pool:
        assert await post(pool) == (200, b'{"ok":true}')
        assert await post(pool) == (200, b'{"ok":true}')  # on a new connection
        assert server.connections == 2


async def test_a_silent_replica_times_out_at_the_deadline_and_loses_its_connection() -> None:
    async with scripted(never_answering) as server, pool_for(server.port) as pool:
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await post(pool, timeout=0.3)
        assert 0.25 < time.monotonic() - began < 2.0
        async with asyncio.timeout(BOUND):
            while server.closed < 1:  # noqa: ASYNC110 - the server's side, polled
                await asyncio.sleep(0.01)
        assert pool.open_connections == 0


async def test_the_deadline_covers_a_body_that_trickles() -> None:
    async def trickle(server: Server, reader: Reader, w: Writer) -> None:
        await read_request(reader, server)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.05)

    async with scripted(trickle) as server, pool_for(server.port) as pool:
        with pytest.raises(TimeoutError):
            await post(pool, timeout=0.4)


async def test_a_refused_connection_fails_to_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        async with pool_for(port) as pool:
            with pytest.raises(ConnectFailed, match="could not connect"):
                await post(pool)
            assert pool.open_connections == 0


async def test_a_tls_handshake_that_never_ends_times_out_by_the_connect_timeout() -> None:
    async def silent(server: Server, reader: Reader, w: Writer) -> None:
        await until_closed(reader)

    async with scripted(silent) as server:
        settings = PoolSettings(max_connections=4, keepalive=30.0, connect_timeout=0.3)
        pool = UpstreamPool(f"https://127.0.0.1:{server.port}", settings)
        try:
            began = time.monotonic()
            with pytest.raises(TimeoutError):
                await post(pool, timeout=BOUND - 1)
            assert time.monotonic() - began < 2.0
            assert pool.open_connections == 0
        finally:
            await pool.close()


async def test_requests_beyond_max_connections_wait_for_a_connection() -> None:
    settings = PoolSettings(max_connections=2, keepalive=30.0, connect_timeout=2.0)
    async with scripted(answering_after(0.05)) as server, pool_for(server.port, settings) as pool:
        results = await asyncio.gather(*(post(pool) for _ in range(8)))
        assert results == [(200, b'{"ok":true}')] * 8
        assert server.peak_open == 2
        assert pool.open_connections == 2


async def test_a_request_that_gives_up_waiting_leaves_the_queue_to_the_others() -> None:
    settings = PoolSettings(max_connections=1, keepalive=30.0, connect_timeout=2.0)
    async with scripted(answering_after(0.3)) as server, pool_for(server.port, settings) as pool:
        first = asyncio.create_task(post(pool))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await post(pool, timeout=0.1)  # waited for the one connection, in vain
        assert await first == (200, b'{"ok":true}')
        assert await post(pool) == (200, b'{"ok":true}')
        assert server.connections == 1


async def test_idle_connections_are_closed_after_keepalive() -> None:
    settings = PoolSettings(max_connections=4, keepalive=0.2, connect_timeout=2.0)
    async with scripted(answering(OK)) as server, pool_for(server.port, settings) as pool:
        assert await post(pool) == (200, b'{"ok":true}')
        assert pool.idle_connections == 1
        async with asyncio.timeout(BOUND):
            while server.closed < 1:  # noqa: ASYNC110 - the server's side, polled
                await asyncio.sleep(0.02)
        assert pool.open_connections == 0


async def test_a_slow_reader_holds_back_its_upstream() -> None:
    total = 64 * 1024 * 1024
    written = 0

    async def flood(server: Server, reader: Reader, w: Writer) -> None:
        nonlocal written
        await read_request(reader, server)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        piece = b"x" * 65536
        while written < total:
            w.write(piece)
            await w.drain()
            written += len(piece)

    async with scripted(flood) as server, pool_for(server.port) as pool:
        async with asyncio.timeout(BOUND * 4):
            response = await pool.post("/v1/x", {}, b"{}", BOUND * 4)
            await asyncio.sleep(0.5)  # read nothing meanwhile
            assert written < total // 2  # paused: the socket's buffers, not the whole body
            received = 0
            while piece := await response.readany():
                assert len(piece) <= PAUSE_ABOVE + 256 * 1024
                received += len(piece)
            response.release()
        assert received == total


async def test_closing_a_response_wakes_its_pending_read() -> None:
    async def hold(server: Server, reader: Reader, w: Writer) -> None:
        await read_request(reader, server)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await until_closed(reader)

    async with scripted(hold) as server, pool_for(server.port) as pool:
        async with asyncio.timeout(BOUND):
            response = await pool.post("/v1/x", {}, b"{}", BOUND)
            assert await response.readany() == b"hello"
            pending = asyncio.create_task(response.readany())
            await asyncio.sleep(0.05)
            response.close()
            with pytest.raises(ConnectionLost):
                await pending
        assert pool.open_connections == 0


async def test_a_cancelled_request_closes_its_connection() -> None:
    async with scripted(never_answering) as server, pool_for(server.port) as pool:
        task = asyncio.create_task(post(pool))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.open_connections == 0
        async with asyncio.timeout(BOUND):
            while server.closed < 1:  # noqa: ASYNC110 - the server's side, polled
                await asyncio.sleep(0.01)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
async def test_a_header_with_a_line_break_is_never_sent(value: str) -> None:
    async with scripted(answering(OK)) as server, pool_for(server.port) as pool:
        with pytest.raises(ValueError, match="line break"):
            await pool.post("/v1/x", {"X-Request-ID": value}, b"{}", BOUND)
        assert server.connections == 0


async def test_closing_the_pool_fails_its_requests_and_refuses_new_ones() -> None:
    async with scripted(never_answering) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}", SETTINGS)
        task = asyncio.create_task(post(pool))
        await asyncio.sleep(0.1)
        await pool.close()
        with pytest.raises(ConnectionLost):
            await task
        with pytest.raises(ConnectFailed, match="closed"):
            await post(pool)
