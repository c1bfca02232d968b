"""Rate limits shared through a real Redis: two gateway processes admit exactly one key's
limit between them; concurrency slots in Redis are freed; tokens are reconciled. Uses the
machine's Redis on 127.0.0.1:6379 (fresh keys), or a private redis-server when none answers
there. Outages: test_limits_redis_failures.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as redis

from gateway.process.config import load_config
from gateway.process.server import start_gateway
from tests.gateway.harness import bounded_client, mock_service, serving_process
from tests.gateway.redis_harness import (
    CHAT,
    PrivateRedis,
    chat,
    config_text,
    free_port,
    fresh_key,
    gateway_on,
)


async def test_two_gateway_processes_admit_exactly_the_limit(
    tmp_path: Path, shared_redis: str
) -> None:
    key_id, key = fresh_key()
    async with mock_service(model="m", ttft=0.0) as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(config_text(upstream.url, shared_redis, key_id, {"rpm": 10}))
        async with (
            serving_process(config) as (_, first),
            serving_process(config) as (_, second),
            bounded_client() as http,
        ):
            statuses = await asyncio.gather(
                *(chat(http, (first, second)[i % 2], key) for i in range(30))
            )
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20


async def test_concurrency_slots_in_redis_are_freed(tmp_path: Path, shared_redis: str) -> None:
    key_id, key = fresh_key()
    async with mock_service(model="m", ttft=0.0) as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(config_text(upstream.url, shared_redis, key_id, {"max_concurrent": 1}))
        server = await start_gateway(load_config(config))
        client = redis.Redis.from_url(shared_redis)
        flight = f"citadel:rl:key:{key_id}:flight"
        try:
            gate = asyncio.Semaphore(0)
            upstream.state.token_gate = gate
            async with bounded_client() as http:
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


async def test_tokens_are_reconciled_in_redis_streams_included(
    tmp_path: Path, shared_redis: str
) -> None:
    key_id, key = fresh_key()
    async with (
        gateway_on(tmp_path, shared_redis, key_id, {"tpm": 2000}) as server,
        bounded_client() as http,
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
