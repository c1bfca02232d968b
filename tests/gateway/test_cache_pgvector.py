"""The semantic cache's questions in PostgreSQL with pgvector, shared by gateways: a question
answered by one is found, in other words, by another; a database that is down makes the
semantic lookup a miss, never an error, and it comes back. The database is a private one
(the `pgserver` package: PostgreSQL with pgvector) that the test may stop; the answers are
in the machine's Redis, in namespaces new in every run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from pgserver.postgres_server import PostgresServer, get_server

from gateway.cache.settings import CacheSettings, VectorStoreSettings
from tests.gateway.harness import Deployment
from tests.gateway.redis_harness import SHARED_REDIS
from tests.gateway.test_cache import sdk, stored
from tests.gateway.test_cache_semantic import ask, semantic, semantic_results, upstream, user

# Questions no other test asks: the answers live in the shared Redis under the test keys
# (tests.gateway.test_cache), which every cache test of a run shares.
PORTUGAL = "What is the capital of Portugal?"
REWORDED = "what is THE capital of portugal"


@asynccontextmanager
async def private_postgres(data: Path) -> AsyncIterator[PostgresServer]:
    server = await asyncio.to_thread(get_server, data, cleanup_mode="stop")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.cleanup)


def shared(url: str) -> CacheSettings:
    return CacheSettings(
        backend="redis", redis_url=SHARED_REDIS, ttl=60, retry_after=0,
        vectors=VectorStoreSettings(backend="pgvector", postgres_url=url),
    )  # fmt: skip


@asynccontextmanager
async def gateways(url: str, count: int) -> AsyncIterator[list[Deployment]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(semantic(shared(url))) for _ in range(count)]


async def test_a_question_answered_by_one_gateway_is_found_reworded_by_another(
    tmp_path: Path,
) -> None:
    async with private_postgres(tmp_path / "pg") as db, gateways(db.get_uri(), 2) as (one, two):
        async with sdk(one) as first:
            assert (await ask(first, user(PORTUGAL)))[0] == "miss"
        await stored(one)
        async with sdk(two) as second:
            status, similarity, _ = await ask(second, user(REWORDED))
        assert status == "hit"
        assert similarity is not None
        assert upstream(one) == 1
        assert upstream(two) == 0


async def test_a_database_outage_is_a_miss_and_the_semantic_cache_comes_back(
    tmp_path: Path,
) -> None:
    data = tmp_path / "pg"
    async with private_postgres(data) as db:
        url = db.get_uri()
        # Other questions than the first test's: its answers are in Redis, under the same key.
        async with gateways(url, 1) as (gw,), sdk(gw) as client:
            await ask(client, user("What is the capital of Germany?"))
            await stored(gw)
            assert (await ask(client, user("what is the capital of GERMANY")))[0] == "hit"
            await asyncio.to_thread(db.cleanup)  # stopped
            for question in ("What is the capital of Spain?", "what is THE capital of spain"):
                status, _, text = await ask(client, user(question))
                assert status == "miss"
                assert text  # answered by the model
            assert (await semantic_results(gw)).get("unavailable", 0) >= 2
            restarted = await asyncio.to_thread(get_server, data, cleanup_mode="stop")
            assert restarted.get_uri() == url
            try:
                await ask(client, user("What is the capital of Italy?"))
                await stored(gw)
                assert (await ask(client, user("what is the CAPITAL of italy")))[0] == "hit"
            finally:
                await asyncio.to_thread(restarted.cleanup)
