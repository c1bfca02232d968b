"""The usage ledger in PostgreSQL for a fleet: two gateways write one table, exactly one
record per request; a private PostgreSQL (one the test may stop: the machine's shared one is
never stopped) stopped under load and restarted loses and duplicates nothing; a gateway
stopped during an outage spills what it holds, and the next start replays it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import asyncpg
import openai
from openai.types.chat import ChatCompletionMessageParam
from pgserver.postgres_server import get_server

from actors.ledger.actor import LedgerSettings
from actors.ledger.pgstore import append
from actors.ledger.store import LedgerStore, UsageRecord
from actors.postgres.schema import migrate
from tests.gateway.harness import (
    ADMIN_KEY,
    API_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)
from tests.gateway.test_cache_pgvector import private_postgres
from tests.gateway.test_keys_postgres import cli, database, eventually

__all__ = ["database"]  # the fixture, shared with the keys' tests
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@asynccontextmanager
async def ledgered(url: str, spill: Path, instance: str) -> AsyncIterator[Deployment]:
    usage = LedgerSettings(path=url, spill=str(spill), flush_interval=0.05)
    async with deployment([ModelPlan("m", mock={"ttft": 0.0})], usage=usage) as gw:
        gw.state.instance = instance
        yield gw


async def send(
    gw: Deployment, count: int, *, stream: bool = False, request_id: str | None = None
) -> int:
    """`count` requests (each with the client's `request_id`, if given); how many were
    answered."""
    answered = 0
    headers = {"X-Request-ID": request_id} if request_id else None
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S,
        default_headers=headers,
    ) as client:  # fmt: skip
        for _ in range(count):
            if stream:
                chunks = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
                async for _ in chunks:
                    pass
            else:
                await client.chat.completions.create(model="m", messages=CHAT)
            answered += 1
    return answered


async def rows(url: str) -> list[asyncpg.Record]:
    db = await asyncpg.connect(url, timeout=10)
    try:
        return list(await db.fetch("SELECT record_id, instance, status FROM usage", timeout=10))
    finally:
        await db.close()


def spill_of(gw: Deployment) -> dict[str, object]:
    node = gw.state.root.snapshot().find("root/ledger_writer")
    assert node is not None
    return node.details


async def test_two_gateways_write_one_table_one_record_per_request(
    database: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(ledgered(database, tmp_path / "a.db", "gw-a"))
        b = await stack.enter_async_context(ledgered(database, tmp_path / "b.db", "gw-b"))
        sent = await asyncio.gather(
            send(a, 15),
            send(b, 10, stream=True),
            # One client id for many requests: each is still its own record.
            send(a, 5, stream=True, request_id="one-client-id"),
        )
        async with (
            bounded_client() as http,
            http.get(
                f"{a.url}/admin/usage?by=model",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ) as response,
        ):
            summary = await response.json()
        assert summary["usage"][0]["requests"] == sum(sent)  # both gateways' requests
    found = await rows(database)
    assert len(found) == sum(sent) == 30
    assert len({row["record_id"] for row in found}) == 30
    assert sorted({row["instance"] for row in found}) == ["gw-a", "gw-b"]
    code, out, err = await cli("usage", "--db", database, "--by", "backend,day", "--csv")
    assert code == 0, err
    header, *lines = out.strip().splitlines()
    assert header.startswith("backend,day,requests,prompt_tokens")
    assert sum(int(line.split(",")[2]) for line in lines) == 30


async def test_postgres_stopped_under_load_and_restarted_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "pg"
    async with private_postgres(data) as db:
        url = db.get_uri()
        async with ledgered(url, tmp_path / "spill.db", "gw") as gw:
            load = asyncio.gather(*(send(gw, 40) for _ in range(4)))
            await eventually(lambda: spill_of(gw)["written"] != 0, timeout=10)
            await asyncio.to_thread(db.cleanup)  # stopped, with requests going on
            await asyncio.sleep(1.0)
            restarted = await asyncio.to_thread(get_server, data)
            answered = sum(await load)
            await eventually(lambda: spill_of(gw)["spilled"] == 0, timeout=30)
            assert spill_of(gw)["replayed"] != 0  # some waited in the spill
        try:
            found = await rows(url)  # the gateway stopped: its last batch written
        finally:
            await asyncio.to_thread(restarted.cleanup)
    assert answered == 160
    assert len(found) == 160
    assert len({row["record_id"] for row in found}) == 160


async def test_a_gateway_stopped_during_an_outage_spills_and_the_next_start_replays(
    tmp_path: Path,
) -> None:
    data, spill = tmp_path / "pg", tmp_path / "spill.db"
    async with private_postgres(data) as db:
        url = db.get_uri()
        async with ledgered(url, spill, "gw") as gw:
            await send(gw, 5)
            await eventually(lambda: spill_of(gw)["written"] == 5, timeout=10)
            await asyncio.to_thread(db.cleanup)
            await send(gw, 7, stream=True)
        # Stopped (as SIGTERM stops it) while the database was down: nothing dropped.
        store = LedgerStore(spill)
        try:
            assert store.count() == 7
        finally:
            store.close()
        restarted = await asyncio.to_thread(get_server, data)
        try:
            async with ledgered(url, spill, "gw-2") as gw:
                await eventually(lambda: spill_of(gw)["replayed"] == 7, timeout=30)
            found = await rows(url)
            store = LedgerStore(spill)
            try:
                assert store.count() == 0  # replayed, then forgotten
            finally:
                store.close()
        finally:
            await asyncio.to_thread(restarted.cleanup)
    assert len(found) == 12
    assert len({row["record_id"] for row in found}) == 12
    assert json.dumps(sorted({row["instance"] for row in found})) == '["gw"]'


async def test_a_batch_written_twice_is_written_once(database: str) -> None:
    """A replay cut short between its insert and forgetting its rows writes them again."""
    await migrate(database)
    batch = [
        UsageRecord(
            ts=1.0,
            request_id="same-client-id",
            key_id=None,
            model="m",
            backend="m#0",
            endpoint="/v1/chat/completions",
            prompt_tokens=1,
            completion_tokens=2,
            status=200,
            latency_ms=1.0,
            ttft_ms=None,
            record_id=f"r{i}",
            instance="gw",
        )
        for i in range(3)
    ]
    db = await asyncpg.connect(database, timeout=10)
    try:
        await append(db, batch)
        await append(db, batch[1:])
        count = await db.fetchval("SELECT count(*) FROM usage", timeout=10)
    finally:
        await db.close()
    assert count == 3  # one client id for all three: only the gateway's own id is unique
