"""Rate limits shared through a real Redis: two gateway processes admit exactly one key's
limit between them; concurrency slots in Redis are freed; Redis going down and coming back
(fail open and fail closed). Uses the machine's Redis on 127.0.0.1:6379, or a private
redis-server when none answers there; outages use a private one, never the shared one."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis
import yaml
from openai.types.chat import ChatCompletionMessageParam

from actors.keys import hash_secret
from actors.tree import LIMITER
from gateway.config import load_config
from gateway.server import RunningServer, start_gateway
from gateway.state import STATE, GatewayState
from tests.gateway.harness import mock_service, serving_process

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
SECRET = "r" * 43


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, that the test may stop and start again.

    A port found free may be taken before redis-server binds it: then our server exits, and
    the first start moves to another port (a restart must keep its port, and retries it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        for _ in range(5):
            self.process = await asyncio.create_subprocess_exec(
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await self._ours_answers():
                self._started = True
                return
            await self.stop()
            if not self._started:
                self.port = free_port()
        raise RuntimeError("no private redis-server could be started")

    async def _ours_answers(self) -> bool:
        """Whether this process (not another on the port) answers a ping."""
        assert self.process is not None
        client = redis.Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while self.process.returncode is None:
                    with suppress(redis.ConnectionError):
                        server = await client.info("server")
                        return bool(server["process_id"] == self.process.pid)
                    await asyncio.sleep(0.01)  # redis-server starting: nothing to wait on
        finally:
            await client.aclose()
        return False

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def shared_redis() -> AsyncIterator[str]:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        await client.ping()
    except redis.ConnectionError:
        async with private_redis() as server:
            yield server.url
        return
    finally:
        await client.aclose()
    yield "redis://127.0.0.1:6379/0"


def config_text(
    upstream: str, redis_url: str, key_id: str, scopes: dict[str, Any], **limits: Any
) -> str:
    return yaml.safe_dump(
        {
            "listen": "127.0.0.1:0",
            "auth": {
                "keys": [{"id": key_id, "secret_sha256": hash_secret(SECRET), "scopes": scopes}]
            },
            "limits": {"redis_url": redis_url, **limits},
            "logging": {"format": "json", "access_log": False},
            "models": [{"name": "m", "backends": [{"url": upstream}]}],
        }
    )


async def chat(http: aiohttp.ClientSession, url: str, key: str, **body: Any) -> int:
    async with http.post(
        f"{url}/v1/chat/completions",
        json={"model": "m", "messages": CHAT, **body},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        await response.read()
        return response.status


async def test_two_gateway_processes_admit_exactly_the_limit(
    tmp_path: Path, shared_redis: str
) -> None:
    key_id = secrets.token_hex(6)  # fresh limit state in the shared Redis
    key = f"sk-citadel-{key_id}-{SECRET}"
    async with mock_service(model="m", ttft=0.0) as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(config_text(upstream.url, shared_redis, key_id, {"rpm": 10}))
        async with (
            serving_process(config) as (_, first),
            serving_process(config) as (_, second),
            aiohttp.ClientSession() as http,
        ):
            statuses = await asyncio.gather(
                *(chat(http, (first, second)[i % 2], key) for i in range(30))
            )
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20


async def test_concurrency_slots_in_redis_are_freed(tmp_path: Path, shared_redis: str) -> None:
    key_id = secrets.token_hex(6)
    key = f"sk-citadel-{key_id}-{SECRET}"
    async with mock_service(model="m", ttft=0.0) as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(config_text(upstream.url, shared_redis, key_id, {"max_concurrent": 1}))
        server = await start_gateway(load_config(config))
        client = redis.Redis.from_url(shared_redis)
        flight = f"citadel:rl:key:{key_id}:flight"
        try:
            gate = asyncio.Semaphore(0)
            upstream.state.token_gate = gate
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{server.url}/v1/chat/completions",
                    json={"model": "m", "messages": CHAT, "stream": True},
                    headers={"Authorization": f"Bearer {key}"},
                ) as held:
                    await held.content.readany()
                    assert await client.zcard(flight) == 1
                    assert await chat(http, server.url, key) == 429
                # The client is gone; the slot comes back once the gateway has settled it.
                async with asyncio.timeout(10):
                    while await client.zcard(flight):  # noqa: ASYNC110 - another process's state
                        await asyncio.sleep(0.01)  # state in another process: poll it
                upstream.state.token_gate = None
                assert await chat(http, server.url, key) == 200
                assert await client.zcard(flight) == 0
        finally:
            await client.aclose()
            await server.close()


def limiter_details(state: GatewayState) -> dict[str, Any]:
    details: dict[str, Any] = state.system.lookup(LIMITER).snapshot().details
    return details


@asynccontextmanager
async def gateway_on(
    tmp_path: Path, redis_url: str, key_id: str, scopes: dict[str, Any], **limits: Any
) -> AsyncIterator[RunningServer]:
    async with mock_service(model="m", ttft=0.0) as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(config_text(upstream.url, redis_url, key_id, scopes, **limits))
        server = await start_gateway(load_config(config))
        try:
            yield server
        finally:
            await server.close()


async def test_redis_down_fails_open_on_local_limits_and_recovers(tmp_path: Path) -> None:
    key_id = secrets.token_hex(6)
    key = f"sk-citadel-{key_id}-{SECRET}"
    async with (
        private_redis() as store,
        gateway_on(tmp_path, store.url, key_id, {"rpm": 1000}) as server,
        aiohttp.ClientSession() as http,
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
    key_id = secrets.token_hex(6)
    key = f"sk-citadel-{key_id}-{SECRET}"
    async with (
        private_redis() as store,
        gateway_on(tmp_path, store.url, key_id, {"rpm": 1000}, redis_failure="closed") as server,
        aiohttp.ClientSession() as http,
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


async def test_tokens_are_reconciled_in_redis_streams_included(
    tmp_path: Path, shared_redis: str
) -> None:
    key_id = secrets.token_hex(6)
    key = f"sk-citadel-{key_id}-{SECRET}"
    async with (
        gateway_on(tmp_path, shared_redis, key_id, {"tpm": 2000}) as server,
        aiohttp.ClientSession() as http,
    ):
        assert await chat(http, server.url, key, max_tokens=1000) == 200
        assert await chat(http, server.url, key, max_tokens=1000, stream=True) == 200
        async with http.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "m", "messages": CHAT, "max_tokens": 1000},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            # Charged ~1000 each up front; 16 completion tokens each really used.
            assert response.status == 200
            assert int(response.headers["x-ratelimit-remaining-tokens"]) > 900 - 2 * 40


async def test_a_private_redis_moves_off_a_port_taken_before_it_bound() -> None:
    """The port race: a free port handed to redis-server after someone else took it."""
    squatter = PrivateRedis(free_port())
    await squatter.start()
    try:
        late = PrivateRedis(squatter.port)
        await late.start()
        try:
            assert late.port != squatter.port
            assert late.process is not None
            client = redis.Redis.from_url(late.url)
            try:
                assert (await client.info("server"))["process_id"] == late.process.pid
            finally:
                await client.aclose()
        finally:
            await late.stop()
    finally:
        await squatter.stop()
