"""The usage ledger: one exact record per completed request, streams included, and none
lost to a SIGTERM under load."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from actors.tree import LEDGER
from gateway.http.state import STATE
from gateway.process.config import load_config
from gateway.process.server import start_gateway
from tests.gateway.harness import (
    ADMIN_KEY,
    API_KEY,
    bounded_client,
    mock_service,
    serving_process,
    until,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "count the tokens"}]}


def write_config(path: Path, upstream: str, ledger: Path, **extra: Any) -> None:
    config = {
        "listen": "127.0.0.1:0",
        "auth": {"api_keys": [API_KEY], "admin_keys": [ADMIN_KEY]},
        "logging": {"format": "json", "access_log": False},
        "usage": {"path": str(ledger), "batch_size": 16, "flush_interval": 0.2},
        "models": [{"name": "m", "backends": [{"url": upstream}]}],
        **extra,
    }
    path.write_text(yaml.safe_dump(config))


def rows(ledger: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(ledger)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM usage"))
    finally:
        db.close()


async def send(http: aiohttp.ClientSession, url: str, stream: bool) -> tuple[str, bytes]:
    async with http.post(
        f"{url}/v1/chat/completions", json={**CHAT, "stream": stream}, headers=AUTH
    ) as response:
        assert response.status == 200
        return response.headers["x-request-id"], await response.read()


async def test_a_burst_is_recorded_exactly_streams_included(tmp_path: Path) -> None:
    ledger = tmp_path / "usage.db"
    async with mock_service(model="m", ttft=0.0) as upstream:
        write_config(tmp_path / "gateway.yaml", upstream.url, ledger)
        server = await start_gateway(load_config(tmp_path / "gateway.yaml"))
        try:
            async with bounded_client() as http:
                sent = await asyncio.gather(
                    *(send(http, server.url, stream=i % 2 == 1) for i in range(50))
                )
                answer = json.loads(sent[0][1])
                async with http.get(f"{server.url}/admin/usage", headers=ADMIN) as response:
                    summary = await response.json()
                async with http.get(
                    f"{server.url}/admin/usage?by=model,day&hours=1", headers=ADMIN
                ) as response:
                    assert response.status == 200
                    assert (await response.json())["usage"][0]["requests"] == 50
                async with http.get(f"{server.url}/admin/usage?by=colour", headers=ADMIN) as r:
                    assert r.status == 400
        finally:
            await server.close()
    prompt, completion = answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]
    assert summary["usage"] == [
        {
            "key": "static-0",
            "model": "m",
            "requests": 50,
            "prompt_tokens": 50 * prompt,
            "completion_tokens": 50 * completion,
            "total_tokens": 50 * (prompt + completion),
            "errors": 0,
            "avg_latency_ms": summary["usage"][0]["avg_latency_ms"],
            "estimated_requests": 0,  # the mock reports usage, streams included
            "cached_requests": 0,
            "saved_tokens": 0,
        }
    ]
    records = rows(ledger)
    assert sorted(r["request_id"] for r in records) == sorted(rid for rid, _ in sent)
    streamed = [r for r in records if r["ttft_ms"] is not None]
    assert len(streamed) == 25  # the streams, with their time to first token
    assert all(r["completion_tokens"] == completion and r["status"] == 200 for r in records)
    assert all(r["backend"] == "m#0" and r["endpoint"] == "/v1/chat/completions" for r in records)
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "usage", "--db", str(ledger), "--by", "model",
        "--json", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    by_model = json.loads(out)
    assert by_model["model"] == "m"
    assert by_model["requests"] == 50
    assert by_model["total_tokens"] == 50 * (prompt + completion)


async def test_sigterm_under_load_loses_no_record(tmp_path: Path) -> None:
    ledger = tmp_path / "usage.db"
    async with mock_service(model="m", ttft=0.0, tokens_per_s=100.0) as upstream:
        config = tmp_path / "gateway.yaml"
        write_config(config, upstream.url, ledger, shutdown_grace=20)
        async with serving_process(config) as (process, url), bounded_client() as http:
            load = [asyncio.ensure_future(send(http, url, stream=i % 2 == 0)) for i in range(40)]
            await until(lambda: upstream.state.stats.requests == 40, passes=10_000_000)
            process.send_signal(signal.SIGTERM)  # all 40 accepted, none finished yet
            sent = await asyncio.gather(*load)
            assert await process.wait() == 0
    records = rows(ledger)
    assert sorted(r["request_id"] for r in records) == sorted(rid for rid, _ in sent)
    assert all(r["completion_tokens"] == 16 for r in records)


async def test_records_a_write_failed_on_are_written_when_the_database_takes_them_again(
    tmp_path: Path,
) -> None:
    """A batch the database refuses goes back in the buffer and is written by a later tick."""
    ledger = tmp_path / "usage.db"
    async with mock_service(model="m", ttft=0.0) as upstream:
        write_config(tmp_path / "gateway.yaml", upstream.url, ledger)
        server = await start_gateway(load_config(tmp_path / "gateway.yaml"))
        details = server.runner.app[STATE].system.lookup(LEDGER).snapshot
        db = sqlite3.connect(ledger, isolation_level=None)
        try:
            async with bounded_client() as http:
                sent = [await send(http, server.url, stream=False)]
                async with asyncio.timeout(10):  # one written: the writer's thread is up
                    while not details().details["written"]:  # noqa: ASYNC110 - a thread's
                        await asyncio.sleep(0.05)  # the ledger's ticker (0.2 s), then the writer
                # The database refuses every insert, at once (no lock, no busy wait).
                db.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON usage "
                    "BEGIN SELECT RAISE(ABORT, 'the disk is full'); END"
                )
                sent += [await send(http, server.url, stream=i % 2 == 1) for i in range(5)]
            async with asyncio.timeout(10):
                while not details().details["write_failures"]:  # noqa: ASYNC110 - a thread's
                    await asyncio.sleep(0.05)
            assert details().details["written"] == 1
            assert len(rows(ledger)) == 1
            db.execute("DROP TRIGGER refuse")
            async with asyncio.timeout(10):
                while details().details["backlog"]:  # noqa: ASYNC110 - the writer's thread
                    await asyncio.sleep(0.05)  # the next tick writes them
        finally:
            db.close()
            await server.close()
    assert sorted(r["request_id"] for r in rows(ledger)) == sorted(rid for rid, _ in sent)
