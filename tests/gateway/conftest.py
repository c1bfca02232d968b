"""Fixtures the gateway's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as redis

from tests.gateway.harness import bounded_client
from tests.gateway.redis_harness import SHARED_REDIS, private_redis


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose every request is bounded (CLIENT_TIMEOUT)."""
    async with bounded_client() as session:
        yield session


@pytest.fixture
async def shared_redis() -> AsyncIterator[str]:
    """The machine's Redis (tests use fresh keys in it), or a private one when none answers."""
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        await client.ping()
    except redis.ConnectionError:
        async with private_redis() as server:
            yield server.url
        return
    finally:
        await client.aclose()
    yield SHARED_REDIS
