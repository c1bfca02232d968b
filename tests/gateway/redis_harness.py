"""Redis for the tests: the machine's (shared state in fresh keys) or a private redis-server
a test may stop and start (outages are never staged on the shared one); and a gateway whose
limits live in it."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis
import yaml
from openai.types.chat import ChatCompletionMessageParam

from actors.auth.keys import hash_secret
from actors.tree import LIMITER
from gateway.http.state import GatewayState
from gateway.process.config import load_config
from gateway.process.server import RunningServer, start_gateway
from tests.gateway.harness import mock_service

SHARED_REDIS = "redis://127.0.0.1:6379/0"
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
SECRET = "r" * 43


def fresh_key() -> tuple[str, str]:
    """(key id, full key) of a key no other test has used: fresh limit state in Redis."""
    key_id = secrets.token_hex(6)
    return key_id, f"sk-citadel-{key_id}-{SECRET}"


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
