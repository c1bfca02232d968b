"""Keys in PostgreSQL for a fleet: two gateways share the machine's real PostgreSQL (a fresh
database per test). A key created through one is accepted by the other; revoked with the CLI,
it is refused by both within 100 ms (NOTIFY), though each had it cached for 30 s; with the
notifications cut, within the cache's TTL; the listener reconnects by itself; a database
that refuses connections gives 503s, never a crash; a schema newer than the gateway knows
refuses the start."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import openai
import pytest

from actors.postgres.schema import VERSION, SchemaTooNew
from gateway.process.config import AuthSettings
from tests.gateway.harness import (
    ADMIN_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)

SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    name = f"citadel_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(f"{SERVER}/postgres", timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{SERVER}/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def fleet(url: str, *, cache_ttl: float = 30.0) -> AsyncIterator[tuple[Deployment, ...]]:
    """Two gateways on the same key store, each with its own model service."""
    auth = AuthSettings(admin_keys=(ADMIN_KEY,), key_store=url, cache_ttl=cache_ttl)
    plans = [ModelPlan("m", mock={"ttft": 0.0})]
    async with deployment(plans, auth=auth) as a, deployment(plans, auth=auth) as b:
        for gw in (a, b):
            await eventually(lambda gw=gw: _listening(gw), timeout=10)  # type: ignore[misc]
        yield a, b


async def eventually(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait for `predicate`, which other tasks (a database connection) make true."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await asyncio.sleep(0.01)


def _listening(gw: Deployment) -> bool:
    node = gw.state.root.snapshot().find("root/keystore")
    return node is not None and bool(node.details.get("listening"))


async def create_key(gw: Deployment, **scopes: Any) -> tuple[str, str]:
    async with (
        bounded_client() as http,
        http.post(f"{gw.url}/admin/keys", json=scopes, headers=ADMIN) as response,
    ):
        body = await response.json()
        assert response.status == 201, body
        return body["id"], body["key"]


async def accepted(gw: Deployment | str, key: str) -> bool:
    """Whether the gateway (or the one at this URL) accepts `key`."""
    url = gw if isinstance(gw, str) else gw.url
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=READ_TIMEOUT_S
    ) as client:
        try:
            await client.models.list()
        except openai.AuthenticationError:
            return False
        return True


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def refused_by_all_within(
    gateways: Sequence[Deployment | str], key: str, limit: float
) -> float:
    """Seconds until every gateway (or gateway URL) refuses `key`, each polled concurrently
    on a connection of its own with plain HTTP (an SDK client per poll would cost more than
    what is measured); fails past `limit`."""
    started = time.monotonic()

    async def poll(gw: Deployment | str) -> None:
        url = gw if isinstance(gw, str) else gw.url
        headers = {"Authorization": f"Bearer {key}"}
        async with bounded_client() as http:
            while True:
                async with http.get(f"{url}/v1/models", headers=headers) as response:
                    if response.status == 401:
                        return
                    assert response.status == 200, response.status
                elapsed = time.monotonic() - started
                assert elapsed <= limit, f"still accepted after {elapsed:.3f} s"
                await asyncio.sleep(0.002)

    await asyncio.gather(*(poll(gw) for gw in gateways))
    return time.monotonic() - started


async def test_a_key_created_on_one_gateway_works_on_the_other_and_the_cli_revokes_it_at_once(
    database: str,
) -> None:
    async with fleet(database) as (a, b):
        key_id, key = await create_key(a, name="team-a", models=["m"])
        assert await accepted(b, key)
        assert await accepted(a, key)  # both have it cached now, for 30 s
        code, out, err = await cli("keys", "revoke", key_id, "--db", database)
        assert code == 0, err
        assert out.strip() == f"revoked {key_id}"
        assert await refused_by_all_within((a, b), key, limit=0.1) <= 0.1
        # The CLI creates and lists keys in PostgreSQL as in SQLite (a budget too), and
        # rotation works across the fleet.
        code, new, err = await cli(
            "keys", "create", "--name", "ci", "--budget-tokens", "5000", "--budget-period",
            "week", "--db", database,
        )  # fmt: skip
        assert code == 0, err
        assert await accepted(b, new.strip())
        code, out, _ = await cli("keys", "list", "--db", database)
        assert "budget=5000/week" in out
        assert key_id in out
        assert "revoked" in out
        other_id, other = await create_key(b, name="team-b")
        assert await accepted(a, other)
        async with (
            bounded_client() as http,
            http.post(f"{a.url}/admin/keys/{other_id}/rotate", headers=ADMIN) as response,
        ):
            rotated = await response.json()
        assert await refused_by_all_within((a, b), other, limit=0.1) <= 0.1
        assert await accepted(b, rotated["key"])


async def test_with_notifications_cut_a_revocation_takes_the_caches_ttl(database: str) -> None:
    async with fleet(database, cache_ttl=1.0) as (a, b):
        key_id, key = await create_key(a)
        assert await accepted(a, key)
        assert await accepted(b, key)
        db = await asyncpg.connect(database, timeout=10)
        try:
            await db.execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_changed")
            await db.execute("UPDATE api_keys SET revoked_at = 1 WHERE id = $1", key_id)
        finally:
            await db.close()
        assert await accepted(a, key)  # no notification: still cached
        assert await refused_by_all_within((a, b), key, limit=1.5) > 0.1


async def test_the_listener_reconnects_and_a_database_refusing_connections_is_a_503(
    database: str,
) -> None:
    async with fleet(database) as (a, b):
        key_id, key = await create_key(a)
        name = database.rsplit("/", 1)[1]
        admin = await asyncpg.connect(f"{SERVER}/postgres", timeout=10)
        try:
            # Every connection to the store dropped: the listeners reconnect by themselves.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            for gw in (a, b):
                await eventually(lambda gw=gw: _listening(gw), timeout=10)  # type: ignore[misc]
            assert await accepted(b, key)
            code, _, err = await cli("keys", "revoke", key_id, "--db", database)
            assert code == 0, err
            assert await refused_by_all_within((a, b), key, limit=0.1) <= 0.1
            # The database refuses connections: an uncached key is a 503, not a crash.
            _, fresh = await create_key(a)
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            async with openai.AsyncOpenAI(
                base_url=f"{b.url}/v1", api_key=fresh, max_retries=0, timeout=READ_TIMEOUT_S
            ) as client:
                with pytest.raises(openai.APIStatusError) as unavailable:
                    await client.models.list()
            assert unavailable.value.status_code == 503
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await eventually(lambda: _listening(b), timeout=15)
            assert await accepted(b, fresh)
            assert b.state.root.snapshot().find("root/keystore") is not None
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()


async def test_a_revocation_missed_while_the_listener_was_down_is_not_served_for_the_ttl(
    database: str,
) -> None:
    """On reconnecting, a gateway cannot know what it missed: its whole cache goes."""
    async with fleet(database) as (a, b):
        key_id, key = await create_key(a)
        assert await accepted(b, key)  # cached for 30 s
        name = database.rsplit("/", 1)[1]
        admin = await asyncpg.connect(f"{SERVER}/postgres", timeout=10)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await eventually(lambda: not _listening(b), timeout=5)
            db = await asyncpg.connect(database, timeout=10)
            try:
                await db.execute("UPDATE api_keys SET revoked_at = 1 WHERE id = $1", key_id)
            finally:
                await db.close()
        finally:
            await admin.close()
        assert await refused_by_all_within((b,), key, limit=5.0) < 5.0


async def test_the_schema_is_migrated_and_a_newer_one_refuses_the_start(database: str) -> None:
    code, out, err = await cli("db", "migrate", "--url", database)
    assert code == 0, err
    assert out.strip() == f"schema at version {VERSION} (applied {list(range(1, VERSION + 1))})"
    code, out, _ = await cli("db", "migrate", "--url", database)
    assert out.strip() == f"schema at version {VERSION}, up to date"
    db = await asyncpg.connect(database, timeout=10)
    try:
        await db.execute("INSERT INTO citadel_schema (version, description) VALUES (999, 'x')")
    finally:
        await db.close()
    with pytest.raises(SchemaTooNew, match="version 999, newer than this gateway knows"):
        async with fleet(database):
            pass
    code, _, err = await cli("db", "migrate", "--url", database)
    assert code == 1
    assert "newer than this gateway knows" in err
