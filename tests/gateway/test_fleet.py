"""A fleet of two gateway processes (`citadel-gateway serve`, each its own process) sharing the
machine's real PostgreSQL (keys and usage; a fresh database) and Redis (limits and budgets):
a key created through one is accepted by the other; a budget admits exactly up to its
tokens across both; every request is one row of the shared ledger; the key, revoked with the
CLI, is refused by both within 100 ms; SIGTERM stops both cleanly. And SIGTERM to a
gateway process while its PostgreSQL is down: its records spilled, replayed by the next
process started on the same spill file."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import openai
import yaml
from openai.types.chat import ChatCompletionMessageParam
from pgserver.postgres_server import get_server

from actors.ledger.store import LedgerStore
from tests.gateway.harness import ADMIN_KEY, READ_TIMEOUT_S, bounded_client, mock_service
from tests.gateway.redis_harness import SHARED_REDIS
from tests.gateway.test_cache_pgvector import private_postgres
from tests.gateway.test_keys_postgres import accepted, cli, database, refused_by_all_within
from tests.gateway.test_ledger_postgres import rows

__all__ = ["database"]  # the fixture
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TPM = 1_000_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, name: str, url: str, upstream: str, *, keys: bool = True
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """`citadel-gateway serve` with its usage in PostgreSQL at `url`, and its keys there too
    (or, `keys=False`, no keys at all: open model endpoints)."""
    port = free_port()
    auth = {"admin_keys": [ADMIN_KEY], "key_store": url, "cache_ttl": 30} if keys else {}
    config = {
        "listen": f"127.0.0.1:{port}",
        "instance": name,
        "auth": auth,
        "usage": {"path": url, "spill": str(tmp_path / f"{name}-spill.db"), "flush_interval": 0.05},
        "limits": {"redis_url": SHARED_REDIS},
        "logging": {"format": "json", "access_log": False},
        "shutdown_grace": 5,
        "models": [{"name": "m", "backends": [{"url": upstream}]}],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    with (tmp_path / f"{name}.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(path),
            stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            cwd=tmp_path,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        await _ready(base, process)
        # Nothing written where it runs (a URL once became a SQLite file's path there).
        assert _named_like_a_url(tmp_path) == []
        yield base, process
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def _named_like_a_url(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("postgres"))


async def _ready(base: str, process: asyncio.subprocess.Process) -> None:
    async with bounded_client() as http, asyncio.timeout(30):
        while True:
            assert process.returncode is None, "the gateway exited at start"
            try:
                async with http.get(f"{base}/health/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def spend(base: str, key: str, used: list[int], reserves: list[int]) -> None:
    """Requests until the budget refuses one: each one's usage appended to `used`, what
    each reserved (read off x-ratelimit-remaining-tokens) to `reserves`."""
    async with openai.AsyncOpenAI(
        base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=READ_TIMEOUT_S
    ) as client:
        for _ in range(500):
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=CHAT, max_tokens=40
                )
            except openai.RateLimitError as refused:
                refusal = refused.body
                break
            reply = raw.parse()
            assert reply.usage is not None
            used.append(reply.usage.total_tokens)
            reserves.append(TPM - int(raw.headers["x-ratelimit-remaining-tokens"]))
        else:
            raise AssertionError("never refused")
    assert isinstance(refusal, dict)
    assert refusal["code"] == "insufficient_quota"


async def test_two_gateway_processes_share_keys_usage_and_a_budget(
    database: str, tmp_path: Path
) -> None:
    async with mock_service(model="m", ttft=0.0) as upstream, AsyncExitStack() as stack:
        (a, process_a), (b, process_b) = [
            await stack.enter_async_context(gateway_process(tmp_path, name, database, upstream.url))
            for name in ("gw-a", "gw-b")
        ]
        scopes = {"name": "team", "tpm": TPM, "budget": {"tokens": 2000, "period": "day"}}
        async with bounded_client() as http, http.post(
            f"{a}/admin/keys", json=scopes, headers=ADMIN
        ) as response:  # fmt: skip
            created = await response.json()
            assert response.status == 201, created
        key = created["key"]
        assert await accepted(b, key)
        used: list[int] = []
        reserves: list[int] = []
        await asyncio.gather(*(spend(base, key, used, reserves) for base in (a, b, a, b)))
        # Nothing in flight now: whatever the burst's refusals left is spent, then refused.
        await spend(b, key, used, reserves)
        assert sum(used) <= 2000 < sum(used) + max(reserves)
        code, _, err = await cli("keys", "revoke", created["id"], "--db", database)
        assert code == 0, err
        assert await refused_by_all_within((a, b), key, limit=0.1) <= 0.1
        for process in (process_a, process_b):
            process.send_signal(signal.SIGTERM)
        for process in (process_a, process_b):
            async with asyncio.timeout(30):
                assert await process.wait() == 0
    answered = [row for row in await rows(database) if row["status"] == 200]
    assert len(answered) == len(used)  # one row per answered request, from both processes
    assert len({row["record_id"] for row in answered}) == len(used)
    assert {row["instance"] for row in answered} == {"gw-a", "gw-b"}


async def test_sigterm_during_a_database_outage_spills_and_the_next_process_replays(
    tmp_path: Path,
) -> None:
    """A private PostgreSQL (the test stops it; the machine's is never stopped)."""
    data = tmp_path / "pg"
    async with private_postgres(data) as db, mock_service(model="m", ttft=0.0) as upstream:
        url = db.get_uri()
        async with gateway_process(tmp_path, "gw", url, upstream.url, keys=False) as (base, gw):
            assert await send(base, 3) == 3
            await asyncio.sleep(0.5)  # written (flush_interval 0.05)
            await asyncio.to_thread(db.cleanup)  # the database is down
            assert await send(base, 6) == 6
            gw.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await gw.wait() == 0
        store = LedgerStore(tmp_path / "gw-spill.db")
        try:
            assert store.count() == 6  # spilled at the stop, none dropped
        finally:
            store.close()
        restarted = await asyncio.to_thread(get_server, data, cleanup_mode="stop")
        try:
            async with gateway_process(tmp_path, "gw", url, upstream.url, keys=False):
                async with asyncio.timeout(30):
                    while len(await rows(url)) < 9:  # noqa: ASYNC110 - another process
                        await asyncio.sleep(0.1)
            found = await rows(url)
        finally:
            await asyncio.to_thread(restarted.cleanup)
    assert len(found) == 9
    assert len({row["record_id"] for row in found}) == 9


async def send(base: str, count: int) -> int:
    answered = 0
    async with openai.AsyncOpenAI(
        base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=READ_TIMEOUT_S
    ) as client:
        for _ in range(count):
            await client.chat.completions.create(model="m", messages=CHAT, max_tokens=4)
            answered += 1
    return answered
