"""The gateway as a real process: SIGTERM lets accepted streams finish, and ends those still
open when the grace period runs out with a clean error event; SIGHUP reloads the file, under
load, without a failed request."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from actors.kernel.errors import ActorDead
from actors.tree import ROUTER
from gateway.http.state import STATE
from gateway.process.config import load_config
from gateway.process.heap import YOUNG_THRESHOLD
from gateway.process.server import serve_until_stopped, start_gateway
from tests.gateway.harness import API_KEY, bounded_client, mock_service, serving_process, until

STREAM = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
CONFIG = """
listen: "127.0.0.1:0"
auth:
  api_keys: ["{key}"]
logging:
  format: json
shutdown_grace: {grace}
models:
  - name: m
    backends:
      - url: {upstream}
"""


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, upstream: str, grace: float
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`citadel-gateway serve` as a real process in front of `upstream`."""
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(key=API_KEY, upstream=upstream, grace=grace))
    async with serving_process(config) as (process, url):
        yield process, url


async def test_sigterm_lets_an_accepted_stream_finish_and_exits_zero(tmp_path: Path) -> None:
    async with mock_service(model="m", ttft=0.0) as mock:
        gate = asyncio.Semaphore(0)
        mock.state.token_gate = gate
        async with (
            gateway_process(tmp_path, mock.url, grace=20) as (process, url),
            bounded_client() as http,
            http.post(url + "/v1/chat/completions", json=STREAM, headers=HEADERS) as response,
        ):
            await response.content.readany()  # the stream is under way
            process.send_signal(signal.SIGTERM)
            assert process.stdout is not None
            async with asyncio.timeout(10):
                while b'"gateway_stopping"' not in await process.stdout.readline():
                    pass
            for _ in range(16):
                gate.release()  # the upstream finishes its answer
            rest = await response.content.read()
            assert rest.endswith(b"data: [DONE]\n\n")
            assert b"error" not in rest
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def test_streams_still_open_when_the_grace_period_ends_get_a_clean_error(
    tmp_path: Path,
) -> None:
    async with mock_service(model="m", ttft=0.0) as mock:
        mock.state.token_gate = asyncio.Semaphore(0)  # the upstream never finishes
        async with (
            gateway_process(tmp_path, mock.url, grace=1.5) as (process, url),
            bounded_client() as http,
            http.post(url + "/v1/chat/completions", json=STREAM, headers=HEADERS) as response,
        ):
            await response.content.readany()
            process.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(response.content.read(), timeout=15)
            assert b'"code":"service_unavailable"' in rest
            assert b"The gateway is shutting down. Retry the request." in rest
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def test_sighup_reloads_the_file_and_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    async with (
        mock_service(model="m", ttft=0.0) as mock,
        gateway_process(tmp_path, mock.url, grace=5) as (process, url),
        bounded_client() as http,
    ):
        config = tmp_path / "gateway.yaml"
        assert process.stdout is not None

        async def reloaded(event: bytes) -> bytes:
            process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                while event not in (line := await process.stdout.readline()):  # type: ignore[union-attr]
                    pass
            return line

        config.write_text(
            config.read_text() + "  - name: m2\n    backends:\n      - url: " + mock.url
        )
        await reloaded(b'"config_reloaded"')
        async with http.get(url + "/v1/models", headers=HEADERS) as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["m", "m2"]

        config.write_text(config.read_text().replace("name: m2", "name: m"))  # a duplicate id
        line = await reloaded(b'"config_reload_rejected"')
        assert b"used twice" in line
        async with http.get(url + "/v1/models", headers=HEADERS) as response:
            assert [m["id"] for m in (await response.json())["data"]] == ["m", "m2"]
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def test_sighup_under_load_adds_and_removes_a_replica_and_a_key(tmp_path: Path) -> None:
    extra_key = "sk-test-extra-key-0123456789"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        mock_service(model="m", ttft=0.0) as first,
        mock_service(model="m", ttft=0.0) as second,
        gateway_process(tmp_path, first.url, grace=5) as (process, url),
        bounded_client() as http,
    ):
        config = tmp_path / "gateway.yaml"
        original = config.read_text()
        assert process.stdout is not None
        failures: list[object] = []
        done = 0
        stop = asyncio.Event()

        async def client(streaming: bool) -> None:
            nonlocal done
            while not stop.is_set():
                body = {**chat, "stream": streaming}
                async with http.post(
                    url + "/v1/chat/completions", json=body, headers=HEADERS
                ) as response:
                    payload = await response.read()
                    complete = not streaming or payload.endswith(b"data: [DONE]\n\n")
                    if response.status != 200 or not complete or b'"error"' in payload:
                        failures.append((response.status, payload[-200:]))
                    done += 1

        lines: asyncio.Queue[bytes] = asyncio.Queue()

        async def drain() -> None:  # keeps the pipe from filling with access-log lines
            while line := await process.stdout.readline():  # type: ignore[union-attr]
                lines.put_nowait(line)

        async def reload(event: bytes) -> None:
            process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                while event not in await lines.get():
                    pass

        async def status_with(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            async with http.post(url + "/v1/chat/completions", json=chat, headers=headers) as r:
                return r.status

        drainer = asyncio.ensure_future(drain())
        clients = [asyncio.ensure_future(client(i % 2 == 0)) for i in range(6)]
        assert await status_with(extra_key) == 401
        config.write_text(
            original.replace(f'["{API_KEY}"]', f'["{API_KEY}", "{extra_key}"]')
            + f"      - url: {second.url}\n"
        )
        await reload(b'"config_reloaded"')
        assert await status_with(extra_key) == 200
        before = second.state.stats.requests
        await until(lambda: second.state.stats.requests >= before + 5, passes=10_000_000)

        config.write_text(original.replace(first.url, second.url))  # first and the key go
        await reload(b'"replica_retired"')  # after its in-flight requests ended
        assert await status_with(extra_key) == 401
        served_by_first = first.state.stats.requests
        before = second.state.stats.requests
        await until(lambda: second.state.stats.requests >= before + 5, passes=10_000_000)
        assert first.state.stats.requests == served_by_first  # no longer routed to
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert done > 10
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        await drainer


@pytest.mark.parametrize("setting", ["auth: {key_store: %s}", "usage: {path: %s}"])
def test_a_store_that_cannot_be_opened_stops_the_start_with_its_path(
    tmp_path: Path, setting: str
) -> None:
    """A key store the gateway could not open once let it start and answer every store key
    with a 503 (its actor died at its first breath)."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where a directory should be")
    store = blocked / "state.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n" + setting % store + "\n"
        "models: [{name: m, backends: [{url: 'http://127.0.0.1:9'}]}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"{store}: cannot open the" in done.stderr
    assert "gateway_listening" not in done.stdout


DEFAULT_THRESHOLDS = gc.get_threshold()


async def test_the_process_exits_1_when_the_root_supervisor_gives_up(tmp_path: Path) -> None:
    """The router crashing more often than the root allows (3 in 10 s) ends the tree: the
    gateway stops listening and `serve` returns 1 (systemd's Restart=on-failure then
    starts a fresh process), instead of serving on with a dead router."""

    class Poison:
        """A message no actor has a case for: handling it raises."""

    async with mock_service(model="m") as mock:
        config = tmp_path / "gateway.yaml"
        config.write_text(CONFIG.format(key=API_KEY, upstream=mock.url, grace=1))
        server = await start_gateway(load_config(config))
        serving = asyncio.ensure_future(serve_until_stopped(server, load_config(config)))
        state = server.runner.app[STATE]
        async with bounded_client() as http:
            async with http.get(f"{server.url}/health/live") as response:
                assert response.status == 200
            # Serving, the collector is set for a server (gateway.process.heap).
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
            assert gc.get_freeze_count() > 0
            gc.unfreeze()
            gc.set_threshold(*DEFAULT_THRESHOLDS)  # the rest of the session as it was
            async with asyncio.timeout(10):
                while not serving.done():
                    with contextlib.suppress(ActorDead):
                        await state.system.lookup(ROUTER).tell(Poison())
                    await asyncio.sleep(0.01)  # the restarted router's backoff: nothing to wait on
            assert serving.result() == 1
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"{server.url}/health/live")
