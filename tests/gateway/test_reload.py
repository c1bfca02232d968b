"""Reloading the configuration under load: replicas and keys come and go, nothing fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from gateway.http.state import STATE, GatewayState
from gateway.process.config import load_config
from gateway.process.server import RunningServer, start_gateway
from tests.gateway.harness import (
    ADMIN_KEY,
    API_KEY,
    READ_TIMEOUT_S,
    Mock,
    bounded_client,
    mock_service,
    until,
)

EXTRA_KEY = "sk-test-extra-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def write_config(path: Path, replicas: list[str], keys: list[str], **extra: Any) -> None:
    config = {
        "listen": "127.0.0.1:0",
        "auth": {"api_keys": keys, "admin_keys": [ADMIN_KEY]},
        "logging": {"access_log": False},
        "shutdown_grace": 10,
        "models": [{"name": "m", "backends": [{"url": url} for url in replicas]}],
        **extra,
    }
    path.write_text(yaml.safe_dump(config))


@asynccontextmanager
async def gateway_from(path: Path) -> AsyncIterator[RunningServer]:
    server = await start_gateway(load_config(path), config_path=str(path))
    try:
        yield server
    finally:
        await server.close()


def replicas_of(state: GatewayState) -> list[str]:
    node = state.root.snapshot().find("root/backends")
    assert node is not None
    return [child.name for child in node.children]


async def reload(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.post(f"{url}/admin/reload", headers=ADMIN) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


class Load:
    """Clients that keep sending, streamed and not, until stopped; every answer must be
    complete, and every failure is kept."""

    def __init__(self, sdk: openai.AsyncOpenAI, clients: int = 8) -> None:
        self.sdk = sdk
        self.done = 0
        self.failures: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._client(i)) for i in range(clients)]

    async def _client(self, index: int) -> None:
        while not self._stop.is_set():
            try:
                if index % 2:
                    stream = await self.sdk.chat.completions.create(
                        model="m",
                        messages=CHAT,
                        stream=True,
                    )
                    chunks = [chunk async for chunk in stream]
                    assert chunks[-1].choices[0].finish_reason == "stop"
                else:
                    answer = await self.sdk.chat.completions.create(
                        model="m",
                        messages=CHAT,
                    )
                    assert answer.choices[0].message.content
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the test's to report
                self.failures.append(exc)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def served(mock: Mock, more: int) -> None:
    """Until `mock` has served `more` requests beyond those it had served (the load runs on
    this loop: loop passes, no wall-clock time)."""
    target = mock.state.stats.requests + more
    await until(lambda: mock.state.stats.requests >= target, passes=10_000_000)


async def test_reload_adds_and_removes_a_replica_and_a_key_under_load(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    async with (
        mock_service(model="m", ttft=0.0) as first,
        mock_service(model="m", ttft=0.0) as second,
    ):
        write_config(path, [first.url], [API_KEY])
        async with (
            gateway_from(path) as gateway,
            bounded_client() as http,
            openai.AsyncOpenAI(
                base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
            ) as sdk,
            openai.AsyncOpenAI(
                base_url=f"{gateway.url}/v1",
                api_key=EXTRA_KEY,
                max_retries=0,
                timeout=READ_TIMEOUT_S,
            ) as extra,
        ):
            state = gateway.runner.app[STATE]
            load = Load(sdk)
            with pytest.raises(openai.AuthenticationError):
                await extra.models.list()
            await served(first, 5)

            write_config(path, [first.url, second.url], [API_KEY, EXTRA_KEY])
            report = await reload(http, gateway.url)
            assert report["added_replicas"] == ["m#1"]
            assert report["retired_replicas"] == []
            assert replicas_of(state) == ["m#0", "m#1"]
            assert [m.id for m in (await extra.models.list()).data] == ["m"]
            await served(second, 5)  # the new replica takes its share at once

            write_config(path, [second.url], [API_KEY])
            report = await reload(http, gateway.url)
            assert report["retired_replicas"] == ["m#0"]
            assert report["added_replicas"] == []
            with pytest.raises(openai.AuthenticationError):
                await extra.models.list()
            await asyncio.gather(*state.background)  # m#0 drains, then stops
            assert replicas_of(state) == ["m#1"]
            await served(second, 5)
            await load.stop()
            assert load.failures == []
            assert load.done > 15


async def test_a_removed_replica_finishes_its_streams_before_it_stops(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    async with (
        mock_service(model="m", ttft=0.0) as first,
        mock_service(model="m", ttft=0.0) as second,
    ):
        write_config(path, [first.url, second.url], [API_KEY])
        async with (
            gateway_from(path) as gateway,
            bounded_client() as http,
            openai.AsyncOpenAI(
                base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
            ) as sdk,
        ):
            state = gateway.runner.app[STATE]
            gates = {mock.url: asyncio.Semaphore(0) for mock in (first, second)}
            for mock in (first, second):
                mock.state.token_gate = gates[mock.url]

            async def stream() -> list[Any]:
                answer = await sdk.chat.completions.create(
                    model="m",
                    messages=CHAT,
                    stream=True,
                )
                return [chunk async for chunk in answer]

            held = asyncio.ensure_future(stream())
            await until(lambda: any(m.state.stats.streams_started for m in (first, second)))
            serving, other = (
                (first, second) if first.state.stats.streams_started else (second, first)
            )
            name = "m#0" if serving is first else "m#1"

            write_config(path, [other.url], [API_KEY])
            report = await reload(http, gateway.url)
            assert report["retired_replicas"] == [name]
            assert name in replicas_of(state)  # draining: the stream is still on it
            assert state.layout.current.loads.get(name) is None  # no longer routed to
            serving.state.token_gate = None  # the rest of the answer flows
            gates[serving.url].release()
            chunks = await held
            assert chunks[-1].choices[0].finish_reason == "stop"
            await asyncio.gather(*state.background)
            assert name not in replicas_of(state)


async def test_an_invalid_config_is_rejected_and_the_running_one_stays(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    async with mock_service(model="m", ttft=0.0) as upstream:
        write_config(path, [upstream.url], [API_KEY])
        async with gateway_from(path) as gateway, bounded_client() as http:
            path.write_text(path.read_text().replace("name: m", "name: 'bad name'"))
            async with http.post(f"{gateway.url}/admin/reload", headers=ADMIN) as response:
                body = await response.json()
            assert response.status == 400
            assert body["error"]["code"] == "invalid_config"
            assert "models[0].name" in body["error"]["message"]
            async with openai.AsyncOpenAI(
                base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
            ) as sdk:
                answer = await sdk.chat.completions.create(model="m", messages=CHAT)
                assert answer.choices[0].message.content


async def test_restart_only_settings_are_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    async with mock_service(model="m", ttft=0.0) as upstream:
        write_config(path, [upstream.url], [API_KEY])
        async with gateway_from(path) as gateway, bounded_client() as http:
            write_config(path, [upstream.url], [API_KEY], listen="127.0.0.1:1", workers=2)
            report = await reload(http, gateway.url)
            assert report["needs_restart"] == ["listen", "workers"]
            state = gateway.runner.app[STATE]
            assert state.config.listen == "127.0.0.1:0"
            assert state.config.workers == 1


async def test_reload_needs_an_admin_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    async with mock_service(model="m", ttft=0.0) as upstream:
        write_config(path, [upstream.url], [API_KEY])
        async with gateway_from(path) as gateway, bounded_client() as http:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with http.post(f"{gateway.url}/admin/reload", headers=headers) as response:
                assert response.status == 403


async def test_a_reload_turns_a_models_cache_on_and_off(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    async with mock_service(model="m", ttft=0.0) as upstream:
        write_config(path, [upstream.url], [API_KEY])
        async with (
            gateway_from(path) as gateway,
            bounded_client() as http,
            openai.AsyncOpenAI(
                base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0,
                timeout=READ_TIMEOUT_S,
            ) as client,
        ):  # fmt: skip
            cache = gateway.runner.app[STATE].cache
            assert cache is not None

            async def cache_says() -> str | None:
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=CHAT, temperature=0
                )
                await cache.flush()
                return raw.headers.get("x-citadel-cache")

            assert await cache_says() is None
            write_config(path, [upstream.url], [API_KEY], cache={"default": True})
            await reload(http, gateway.url)
            assert [await cache_says() for _ in range(2)] == ["miss", "hit"]
            write_config(path, [upstream.url], [API_KEY])
            await reload(http, gateway.url)
            assert await cache_says() is None
            assert upstream.state.stats.requests == 3
