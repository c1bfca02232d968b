"""Slow connections against the gateway, side by side with the same gateway idle:

    python -m ops.bench.slowloris [--connections 500] [--seconds 30]

The gateway runs as its own process (`citadel-gateway serve`, the default `connections`
settings: idle_timeout 15 s, body_timeout 60 s) in front of a mock model service. First a
normal client's latency is measured with nothing else going on; then `--connections` slow
connections are held for `--seconds` (a third silent, a third trickling a header byte a
second, a third trickling a body byte a second, each reopened as soon as the gateway closes
it) while the same client is measured again. Reported: the client's p50/p99 both times and
their ratio, how many slow connections the gateway closed and after how long, and the
gateway's open file descriptors before, at the peak and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from ops.bench.run import free_port, wait_listening

KEY = "sk-bench-slowloris-0123456789"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def client_latencies(url: str, seconds: float) -> list[float]:
    """A normal client, one request after another, for `seconds`."""
    found = []
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            async with http.post(url + "/v1/chat/completions", data=BODY, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            found.append(time.perf_counter() - started)
    return found


async def slow_connection(
    port: int, kind: int, until: float, closes: list[float], stop: asyncio.Event
) -> None:
    """Hold one slow connection, reopening it when the gateway closes it."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(BODY)).encode()
        + b"\r\n\r\n"
    )  # fmt: skip
    trickled = head if kind == 1 else BODY
    while time.monotonic() < until and not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        opened = time.monotonic()
        if kind == 2:
            writer.write(head)
        closed = asyncio.ensure_future(reader.read())
        index = 0
        while not closed.done() and time.monotonic() < until:
            if kind and index < len(trickled):
                try:
                    writer.write(trickled[index : index + 1])
                except ConnectionError:
                    break
                index += 1
            await asyncio.wait([closed], timeout=1.0)  # a byte a second: the attack's pace
        if closed.done():
            closes.append(time.monotonic() - opened)
        else:
            closed.cancel()
        writer.close()


async def attack(
    url: str, port: int, pid: int, connections: int, seconds: float
) -> dict[str, float]:
    idle = await client_latencies(url, 5.0)
    baseline_fds = open_fds(pid)
    closes: list[float] = []
    stop = asyncio.Event()
    until = time.monotonic() + seconds
    holders = [
        asyncio.ensure_future(slow_connection(port, i % 3, until, closes, stop))
        for i in range(connections)
    ]
    await asyncio.sleep(2.0)  # let them all connect
    peak_fds = open_fds(pid)
    loaded = await client_latencies(url, max(1.0, seconds - 4.0))
    stop.set()
    await asyncio.gather(*holders)
    await asyncio.sleep(2.0)  # let the gateway see the last closes
    after_fds = open_fds(pid)

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 2 else 0.0

    return {
        "idle_p50_ms": round(p(idle, 50), 2),
        "idle_p99_ms": round(p(idle, 99), 2),
        "attack_p50_ms": round(p(loaded, 50), 2),
        "attack_p99_ms": round(p(loaded, 99), 2),
        "p99_ratio": round(p(loaded, 99) / max(p(idle, 99), 1e-9), 2),
        "closed_by_gateway": len(closes),
        "median_close_s": round(statistics.median(closes), 1) if closes else 0.0,
        "fds_baseline": baseline_fds,
        "fds_peak": peak_fds,
        "fds_after": after_fds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    upstream_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "gateway.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{port}\nauth: {{api_keys: [{KEY}]}}\n"
            "logging: {access_log: false, level: warning}\n"
            f"models:\n  - name: m\n    backends: [{{url: 'http://127.0.0.1:{upstream_port}'}}]\n"
        )
        python = sys.executable
        upstream = subprocess.Popen(
            [python, "-m", "gateway", "mock-backend", "--port", str(upstream_port),
             "--model", "m"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        gateway = subprocess.Popen(
            [python, "-m", "gateway", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_listening(upstream_port, upstream)
            wait_listening(port, gateway)
            found = asyncio.run(
                attack(
                    f"http://127.0.0.1:{port}", port, gateway.pid, args.connections, args.seconds
                )
            )
        finally:
            for process in (gateway, upstream):
                process.terminate()
                process.wait(timeout=30)
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
