"""The response cache in Redis: shared by gateways (every worker and machine on that Redis),
and an optimisation only: a Redis that is down or slow makes requests bypass the cache,
never fail. Outages are staged on a private redis-server, never on the machine's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import redis.asyncio as redis

from gateway.cache.settings import CachePolicy, CacheSettings
from tests.gateway.harness import Deployment, ModelPlan, deployment
from tests.gateway.redis_harness import SHARED_REDIS, private_redis
from tests.gateway.test_cache import KEY_A, ask, keys, sdk, stored, upstream_requests
from tests.gateway.test_metrics import scrape

UNAVAILABLE = (("model", "m"), ("result", "unavailable"))


def in_redis(url: str, **settings: float) -> CacheSettings:
    return CacheSettings(backend="redis", redis_url=url, ttl=60, **settings)


@asynccontextmanager
async def gateways(settings: CacheSettings, count: int) -> AsyncIterator[list[Deployment]]:
    async with AsyncExitStack() as stack:
        running = []
        for _ in range(count):
            plan = ModelPlan("m", cache=CachePolicy(), mock={"ttft": 0.0})
            running.append(
                await stack.enter_async_context(deployment([plan], auth=keys(), cache=settings))
            )
        yield running


async def test_an_answer_stored_by_one_gateway_is_served_by_another() -> None:
    # The test keys are new in every run (tests.gateway.test_cache): a namespace no earlier
    # run has written to in the shared Redis.
    async with gateways(in_redis(SHARED_REDIS), 2) as (one, two):
        async with sdk(one) as first:
            status, text, _ = await ask(first, stream=True)
        await stored(one)
        async with sdk(two) as second:
            again = await ask(second)
        assert (status, again[0]) == ("miss", "hit")
        assert again[1] == text
        assert upstream_requests(one) == 1
        assert upstream_requests(two) == 0


async def test_entries_expire_in_redis_with_their_ttl() -> None:
    async with gateways(in_redis(SHARED_REDIS), 1) as (gw,), sdk(gw) as client:
        await ask(client, max_tokens=3)
        await stored(gw)
        client_redis = redis.Redis.from_url(SHARED_REDIS)
        try:
            ours = f"citadel:cache:v1:key:{KEY_A[0]}:*"
            found = [k async for k in client_redis.scan_iter(ours)]
            ttls = [await client_redis.pttl(k) for k in found]
        finally:
            await client_redis.aclose()
        assert found
        assert all(0 < ttl <= 60_000 for ttl in ttls)


async def test_a_redis_outage_is_a_bypass_and_the_cache_comes_back() -> None:
    async with private_redis() as server:
        settings = in_redis(server.url, retry_after=0)  # ask the store on every request
        async with gateways(settings, 1) as (gw,), sdk(gw) as client:
            await ask(client)
            await stored(gw)
            assert (await ask(client))[0] == "hit"
            await server.stop()
            for _ in range(3):
                status, text, _ = await ask(client)
                assert status == "bypass"
                assert text  # served by the model, no error
            assert upstream_requests(gw) == 4
            metrics = await scrape(gw)
            assert metrics[("citadel_cache_lookups_total", UNAVAILABLE)] == 3.0
            assert metrics[("citadel_cache_errors_total", (("operation", "get"),))] == 3.0
            await server.start()  # empty: it keeps nothing on disk
            assert (await ask(client))[0] == "miss"
            await stored(gw)
            assert (await ask(client))[0] == "hit"


async def test_after_a_failure_the_store_is_left_alone_for_retry_after() -> None:
    async with private_redis() as server:
        settings = in_redis(server.url, retry_after=60)
        async with gateways(settings, 1) as (gw,), sdk(gw) as client:
            await ask(client)
            await stored(gw)  # the store's write done: the first failure is a lookup's
            await server.stop()
            for _ in range(3):
                assert (await ask(client))[0] == "bypass"
            metrics = await scrape(gw)
            assert metrics[("citadel_cache_lookups_total", UNAVAILABLE)] == 3.0
            assert metrics[("citadel_cache_errors_total", (("operation", "get"),))] == 1.0


async def test_a_slow_redis_costs_a_request_the_lookup_deadline_only() -> None:
    async with private_redis() as server:
        settings = in_redis(server.url, timeout=0.05)
        async with gateways(settings, 1) as (gw,), sdk(gw) as client:
            await ask(client)  # connected, and stored
            await stored(gw)
            admin = redis.Redis.from_url(server.url)
            try:
                # Every other client's commands wait for 3 s: a Redis that is alive but slow.
                await admin.client_pause(3000, all=True)
                paused = time.monotonic()
                status, text, _ = await ask(client)
                # Answered by the model while Redis was still paused: the lookup gave up.
                assert time.monotonic() - paused < 2.5
                assert status == "bypass"
                assert text
            finally:
                await admin.client_unpause()
                await admin.aclose()
