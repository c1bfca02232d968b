"""The limiter's Redis scripts (actors.limiter.redis) against the machine's Redis, fresh keys:
what they tell a client about its quota."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from actors.limiter.local import LimitSpec, Subject
from actors.limiter.redis import RedisLimits
from actors.limiter.resp import RespClient
from tests.gateway.redis_harness import SHARED_REDIS


@pytest.fixture
async def limits() -> AsyncIterator[RedisLimits]:
    client = RespClient(SHARED_REDIS, timeout=2.0)
    yield RedisLimits(client, prefix=f"test:rl:{secrets.token_hex(4)}:")
    await client.close()


async def test_the_requests_left_are_exact_at_the_epoch_s_magnitude(limits: RedisLimits) -> None:
    """Lua's tostring keeps 14 digits: an epoch reading to 0.1 ms. The theoretical arrival
    time and the clock, rounded apart, made `(now + 60 - tat) / interval` 5.99... for rpm 7
    (an interval of 8.571428... s): a client was told 5 left when 6 were."""
    told = []
    for index in range(40):
        subjects = (Subject(f"key:{index}", LimitSpec(rpm=7)),)
        first = await limits.admit(subjects, 1, f"r{index}")
        second = await limits.admit(subjects, 1, f"s{index}")
        assert first.quota is not None
        assert second.quota is not None
        told.append((first.quota.remaining_requests, second.quota.remaining_requests))
    assert told == [(6, 5)] * 40
