"""`workers: N`: several gateway processes on one port under a parent that keeps them up,
with metrics summed over the workers and never going backwards when one is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import openai

from tests.gateway.harness import API_KEY, READ_TIMEOUT_S, bounded_client, mock_service

CONFIG = """
listen: "127.0.0.1:0"
workers: 2
auth:
  api_keys: ["{key}"]
logging:
  format: json
shutdown_grace: 5
models:
  - name: m
    backends:
      - url: {upstream}
"""


class Parent:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.url = ""

    async def event(self, name: str) -> dict[str, object]:
        """The next log event called `name` (any worker's or the parent's)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = await self.process.stdout.readline()
                assert line, f"the gateway exited before {name}"
                if line.startswith(b"{"):
                    record: dict[str, object] = json.loads(line)
                    if record.get("event") == name:
                        return record

    async def events(self, name: str, count: int) -> list[dict[str, object]]:
        """The next `count` log events called `name`, from whichever process logged them."""
        return [await self.event(name) for _ in range(count)]

    def workers(self) -> list[int]:
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sorted(int(child) for child in children)


@asynccontextmanager
async def parent_process(
    tmp_path: Path, upstream: str, notify_socket: str
) -> AsyncIterator[Parent]:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(key=API_KEY, upstream=upstream))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": notify_socket},
        start_new_session=True,  # its own process group: a failed test kills the workers too
    )  # fmt: skip
    parent = Parent(process)
    try:
        ready = await parent.event("workers_ready")
        parent.url = str(ready["url"])
        yield parent
    finally:
        if process.returncode is None:
            # As systemd's KillMode=control-group would: workers left behind would hold the
            # pipe open, and wait() waits for it to close.
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def requests_total(exposition: str) -> float:
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith("citadel_requests_total{") and 'model="m"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_workers_share_the_port_sum_their_metrics_and_a_killed_one_is_replaced(
    tmp_path: Path,
) -> None:
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # stands in for systemd
    systemd.bind(str(tmp_path / "notify"))
    systemd.settimeout(10)
    async with (
        mock_service(model="m", ttft=0.0) as mock,
        parent_process(tmp_path, mock.url, str(tmp_path / "notify")) as parent,
        bounded_client() as http,
        openai.AsyncOpenAI(
            base_url=f"{parent.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
        ) as sdk,
    ):
        workers = parent.workers()
        assert len(workers) == 2
        ready = systemd.recv(4096).decode()  # once, from the parent, after both workers
        assert ready.startswith("READY=1\nSTATUS=2 workers on port ")

        async def burst(count: int) -> None:
            for _ in range(count):  # new connections, spread over the workers by the kernel
                async with (
                    bounded_client() as fresh,
                    fresh.post(
                        f"{parent.url}/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": f"Bearer {API_KEY}"},
                    ) as response,
                ):
                    assert response.status == 200

        await burst(40)
        served = await parent.events("request", 40)  # the access log: one line per request
        # 40 new connections all hashed to one worker: 2**-39. Both counts are in the sum.
        assert {record["worker"] for record in served} == {0, 1}
        exposition = await scrape(http, parent.url)
        assert requests_total(exposition) == 40
        assert 'citadel_backend_healthy{backend="m#0"} 1.0' in exposition

        os.kill(workers[0], signal.SIGKILL)
        died = await parent.event("worker_died")
        assert died["pid"] == workers[0]
        replaced = await parent.event("worker_ready")
        assert replaced["worker"] == died["worker"]
        assert sorted(parent.workers()) != workers
        assert len(parent.workers()) == 2
        assert died["restart_in_s"] == 0.5

        os.kill(int(str(replaced["pid"])), signal.SIGKILL)  # dies again within a minute: backs off
        again = await parent.event("worker_died")
        assert (again["worker"], again["restart_in_s"]) == (died["worker"], 1.0)
        await parent.event("worker_ready")

        assert requests_total(await scrape(http, parent.url)) == 40  # not backwards
        await burst(10)
        answer = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
        assert requests_total(await scrape(http, parent.url)) == 51

        parent.process.send_signal(signal.SIGHUP)  # passed on: every worker reloads the file
        reloaded = await parent.events("config_reloaded", 2)
        assert {record["worker"] for record in reloaded} == {0, 1}

        parent.process.send_signal(signal.SIGTERM)
        await parent.event("workers_stopped")
        assert await parent.process.wait() == 0
        assert systemd.recv(4096) == b"STOPPING=1"
        systemd.close()
