"""The limiter's Redis client (actors.limiter.resp) against real Redis servers: the machine's,
one of the test's own with a password, and sockets that answer nothing or garbage."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest

from actors.limiter.resp import (
    RespClient,
    RespConnectionError,
    RespError,
    RespTimeout,
    Script,
    address_of,
    encode,
    parse,
)
from tests.gateway.redis_harness import SHARED_REDIS, free_port

ECHO = Script("return {tonumber(ARGV[1]) + 1, ARGV[2], KEYS[1], {1, 'two'}, false}")


@pytest.fixture
async def client() -> AsyncIterator[RespClient]:
    redis = RespClient(SHARED_REDIS, timeout=2.0)
    yield redis
    await redis.close()


async def test_a_script_runs_loaded_or_not(client: RespClient) -> None:
    await client.call(b"SCRIPT", b"FLUSH")  # Redis forgets it: EVAL loads it again
    key = f"test:resp:{secrets.token_hex(4)}"
    assert await client.run(ECHO, [key], [41, "x"]) == [42, b"x", key.encode(), [1, b"two"], None]
    assert await client.run(ECHO, [key], [1.5, "é"]) == [
        2,
        "é".encode(),
        key.encode(),
        [1, b"two"],
        None,
    ]


async def test_concurrent_calls_on_one_connection_get_their_own_replies(client: RespClient) -> None:
    key = f"test:resp:{secrets.token_hex(4)}"
    replies = await asyncio.gather(*(client.run(ECHO, [key], [i, str(i)]) for i in range(500)))
    assert [reply[:2] for reply in replies] == [[i + 1, str(i).encode()] for i in range(500)]  # type: ignore[index]


async def test_an_error_reply_raises_and_the_connection_goes_on(client: RespClient) -> None:
    with pytest.raises(RespError, match="ERR"):
        await client.call(b"NOT-A-COMMAND")
    assert await client.call(b"PING") == "PONG"
    assert await client.call(b"GET", f"test:resp:absent:{secrets.token_hex(4)}") is None


@asynccontextmanager
async def redis_with_password(password: str) -> AsyncIterator[int]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--requirepass", password,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)  # redis-server starting: nothing to wait on
                    continue
                writer.close()
                break
        yield port
    finally:
        process.kill()
        await process.wait()


async def test_a_password_and_a_database_are_sent_first() -> None:
    async with redis_with_password("s3cret pass") as port:
        refused = RespClient(f"redis://127.0.0.1:{port}/0", timeout=2.0)
        with pytest.raises(RespError, match="NOAUTH"):
            await refused.call(b"GET", b"k")
        await refused.close()
        wrong = RespClient(f"redis://:nope@127.0.0.1:{port}/0", timeout=2.0)
        with pytest.raises(RespError):
            await wrong.call(b"PING")
        await wrong.close()
        client = RespClient(f"redis://:s3cret%20pass@127.0.0.1:{port}/3", timeout=2.0)
        try:
            await client.call(b"SET", b"where", b"db3")
            assert await client.call(b"GET", b"where") == b"db3"
            other = RespClient(f"redis://default:s3cret%20pass@127.0.0.1:{port}/0", timeout=2.0)
            assert await other.call(b"GET", b"where") is None  # another database
            await other.close()
        finally:
            await client.close()


@asynccontextmanager
async def socket_server(answer: bytes | None) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server that answers every read with `answer` (None: never answers); the
    second value counts the connections it accepted."""
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writers.append(writer)
        with suppress(TimeoutError):
            async with asyncio.timeout(10):
                while await reader.read(4096):
                    if answer is not None:
                        writer.write(answer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_silent_server_times_each_call_out_and_is_reconnected() -> None:
    async with socket_server(None) as (port, accepted):
        client = RespClient(f"redis://127.0.0.1:{port}", timeout=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        calls = await asyncio.gather(
            *(client.call(b"GET", b"k") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(call, RespTimeout) for call in calls)
        assert loop.time() - started < 1.0  # together, not one after the other
        with pytest.raises(RespTimeout):
            await client.call(b"GET", b"k")
        assert len(accepted) == 2  # the timed-out connection was closed, a new one made
        await client.close()


async def test_a_server_that_speaks_no_resp_fails_the_calls_not_the_client() -> None:
    async with socket_server(b"HTTP/1.1 400 Bad Request\r\n\r\n") as (port, _):
        client = RespClient(f"redis://127.0.0.1:{port}", timeout=1.0)
        with pytest.raises(RespConnectionError, match="RESP"):
            await client.call(b"PING")
        await client.close()
    unreachable = RespClient(f"redis://127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(ConnectionRefusedError):
        await unreachable.call(b"PING")


def test_replies_split_anywhere_are_parsed_whole_or_not_at_all() -> None:
    reply = b"*4\r\n:1\r\n$5\r\nhe\r\no\r\n*2\r\n+OK\r\n-ERR no\r\n$-1\r\n"
    for whole in (reply, b"$5\r\nhe\r\no\r\n"):
        for cut in range(len(whole)):
            value, after = parse(whole[:cut], 0)
            assert after == 0, cut  # incomplete: nothing consumed
    value, after = parse(reply, 0)
    assert after == len(reply)
    assert isinstance(value, list)
    assert value[:2] == [1, b"he\r\no"]
    assert value[2][0] == "OK"
    assert isinstance(value[2][1], RespError)
    assert value[3] is None


def test_commands_are_encoded_as_bulk_strings() -> None:
    assert (
        encode((b"GET", "k", 3, 0.5)) == b"*4\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n3\r\n$3\r\n0.5\r\n"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", ("127.0.0.1", 6380, None, False, None, None, 2)),
        ("rediss://u:p%40ss@cache.internal", ("cache.internal", 6379, None, True, "u", "p@ss", 0)),
        (
            "unix:///run/redis.sock?db=5",
            ("127.0.0.1", 6379, "/run/redis.sock", False, None, None, 5),
        ),
    ],
)
def test_urls(url: str, expected: tuple[object, ...]) -> None:
    address = address_of(url)
    got = (address.host, address.port, address.socket, address.tls)
    assert (*got, address.username, address.password, address.db) == expected


def test_what_it_does_not_speak_is_refused() -> None:
    with pytest.raises(ValueError, match="redis://"):
        address_of("http://127.0.0.1:6379")
