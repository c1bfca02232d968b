"""Rate limits when Redis fails: down (fail open on local limits, or closed with a 503),
silent (a Redis that accepts and never answers is given up on after `redis_timeout`), and a
gateway dying with slots held (they expire after `lease_ttl`, not never). Outages use a
private redis-server or a silent listener, never the machine's Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp
import redis.asyncio as redis
from yarl import URL

from gateway.http.state import STATE
from gateway.process.config import load_config
from gateway.process.server import start_gateway
from tests.gateway.harness import bounded_client, mock_service, serving_process
from tests.gateway.redis_harness import (
    CHAT,
    chat,
    config_text,
    fresh_key,
    gateway_on,
    limiter_details,
    private_redis,
)


@asynccontextmanager
async def silent_redis() -> AsyncIterator[str]:
    """A listener that accepts connections and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open, never written to

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_redis_down_fails_open_on_local_limits_and_recovers(tmp_path: Path) -> None:
    key_id, key = fresh_key()
    async with (
        private_redis() as store,
        gateway_on(tmp_path, store.url, key_id, {"rpm": 1000}) as server,
        bounded_client() as http,
    ):
        state = server.runner.app[STATE]
        assert await chat(http, server.url, key) == 200
        await store.stop()
        assert await chat(http, server.url, key) == 200  # served on local limits
        details = limiter_details(state)
        assert details["redis_down"] is True
        assert details["redis_failures"] == 1
        await store.start()
        async with asyncio.timeout(10):
            while limiter_details(state)["redis_down"]:
                assert await chat(http, server.url, key) == 200
                await asyncio.sleep(0.05)  # the limiter tries Redis again after a second
        client = redis.Redis.from_url(store.url)
        try:  # the limit state is in Redis again
            assert await client.exists(f"citadel:rl:key:{key_id}:tat") == 1
        finally:
            await client.aclose()


async def test_redis_down_fails_closed_when_configured(tmp_path: Path) -> None:
    key_id, key = fresh_key()
    async with (
        private_redis() as store,
        gateway_on(tmp_path, store.url, key_id, {"rpm": 1000}, redis_failure="closed") as server,
        bounded_client() as http,
    ):
        assert await chat(http, server.url, key) == 200
        await store.stop()
        async with http.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "m", "messages": CHAT},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert "unreachable" in (await response.json())["error"]["message"]


async def test_a_redis_that_never_answers_is_given_up_on_after_redis_timeout(
    tmp_path: Path,
) -> None:
    """Without the timeout every admission would wait on the hung connection for ever (the
    client's own 30 s bound would end this test instead)."""
    key_id, key = fresh_key()
    async with (
        silent_redis() as url,
        gateway_on(
            tmp_path, url, key_id, {"rpm": 1000}, redis_failure="closed", redis_timeout=0.2
        ) as server,
        bounded_client() as http,
    ):
        async with http.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "m", "messages": CHAT},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
        assert limiter_details(server.runner.app[STATE])["redis_down"] is True


async def test_slots_of_a_gateway_that_died_expire_after_lease_ttl(
    tmp_path: Path, shared_redis: str
) -> None:
    """Each slot carries its own expiry: a busy key, whose set of slots never expires as a
    whole (every admission renews it), still loses the dead gateway's slot after lease_ttl."""
    key_id, key = fresh_key()
    stream = {"model": "m", "messages": CHAT, "stream": True}
    auth = {"Authorization": f"Bearer {key}"}
    config = tmp_path / "gateway.yaml"
    client = redis.Redis.from_url(shared_redis)
    flight = f"citadel:rl:key:{key_id}:flight"
    async with mock_service(model="m") as upstream, bounded_client() as http:
        upstream.state.token_gate = asyncio.Semaphore(0)  # streams stay open
        text = config_text(upstream.url, shared_redis, key_id, {"max_concurrent": 2}, lease_ttl=1)
        config.write_text(text)
        async with (
            serving_process(config) as (holder, url),
            http.post(f"{url}/v1/chat/completions", json=stream, headers=auth) as held,
        ):
            await held.content.readany()  # admitted: the slot is in Redis
            holder.send_signal(signal.SIGKILL)  # dies holding it: nobody settles it
            await holder.wait()
        died = time.monotonic()
        server = await start_gateway(load_config(config))
        try:
            async with http.post(
                f"{server.url}/v1/chat/completions", json=stream, headers=auth
            ) as live:
                await live.content.readany()  # the second slot, held
                assert await chat(http, server.url, key) == 429  # the dead one still counts
            upstream.state.token_gate = None
            async with asyncio.timeout(10):
                while await client.zcard(flight) > 1:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.01)  # the live stream's settlement, on its way
            # The key stays busy (each admission renews its set of slots); only the dead
            # slot's own expiry can free it.
            async with asyncio.timeout(10):
                while True:
                    assert await chat(http, server.url, key) == 200
                    if await client.zcard(flight) == 0:
                        break
                    await asyncio.sleep(0.05)
            assert time.monotonic() - died > 0.5  # freed by expiry, not by a settlement
        finally:
            await client.aclose()
            await server.close()


@asynccontextmanager
async def slow_proxy(target: str, delay: float) -> AsyncIterator[str]:
    """A TCP proxy to the Redis at `target` that holds what clients send for `delay` seconds
    (a slow network): every admission then takes that long."""
    url = URL(target)
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait: float) -> None:
        with suppress(OSError):
            async with asyncio.timeout(30):
                while data := await reader.read(65536):
                    await asyncio.sleep(wait)  # a slow network: nothing to wait on
                    writer.write(data)
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(url.host, url.port)
        for task in (
            asyncio.ensure_future(pipe(reader, upstream_writer, delay)),
            asyncio.ensure_future(pipe(upstream_reader, writer, 0.0)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}{url.path}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()


async def test_an_admission_whose_client_left_while_redis_decided_is_given_back(
    tmp_path: Path, shared_redis: str
) -> None:
    """Clients that hang up while their admission is on its way to Redis: Redis still admits
    them (a slot, tokens), and nobody was left to settle it; their slots stayed taken until
    lease_ttl (an hour by default), and a key with max_concurrent ran out of them."""
    key_id, key = fresh_key()
    client = redis.Redis.from_url(shared_redis)
    flight = f"citadel:rl:key:{key_id}:flight"
    async with (
        slow_proxy(shared_redis, 0.5) as url,
        gateway_on(
            tmp_path, url, key_id, {"rpm": 1000, "max_concurrent": 10}, redis_timeout=3
        ) as server,
    ):
        impatient = aiohttp.ClientTimeout(total=0.2)
        async with aiohttp.ClientSession(timeout=impatient) as http:
            for _ in range(5):
                with suppress(TimeoutError):
                    await chat(http, server.url, key)
        try:
            async with asyncio.timeout(10):
                while not await client.exists(f"citadel:rl:key:{key_id}:tat"):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the admissions reach Redis: nothing to wait on
                while await client.zcard(flight):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # each given back once it lands
            details = limiter_details(server.runner.app[STATE])
            assert details["admitted"] == details["settled"] == 5  # each settled once
        finally:
            await client.aclose()
