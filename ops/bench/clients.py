"""What the upstream's HTTP client costs: aiohttp's ClientSession (what the bare passthrough
uses, and the gateway did), the gateway's own pool (actors.backend.pool) and the least a
keep-alive HTTP/1.1 client can do (a raw asyncio protocol: one write, a Content-Length
read), the same requests to the same upstream.

    python -m ops.bench.clients [--requests 20000] [--concurrency 100]

The headroom #17 leaves: the gateway's CPU per request is the passthrough's (whose client is
this aiohttp one) plus its own work, so a leaner client on the hot path is the one change
that could take it below the passthrough's. This measures how much, before anyone writes
one: CPU time of this process per request, the client's side only (the upstream runs in a
process of its own, pinned apart on two or more cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
import uvloop

from actors.backend.pool import PoolSettings, UpstreamPool
from ops.bench.run import CHAT, free_port, pinned, wait_listening

BODY = json.dumps({**CHAT, "model": "bench/upstream-model"}).encode()


async def with_aiohttp(url: str, requests: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    ) as session:
        headers = {"Content-Type": "application/json", "X-Request-ID": "bench"}

        async def one() -> None:
            async with session.post(url, data=BODY, headers=headers) as response:
                await response.read()

        return await _measure(one, requests, concurrency)


class _Raw(asyncio.Protocol):
    """One keep-alive connection: a request written, the answer read by its Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiting is None:
            return
        head = bytes(self._buffer[:end]).lower()
        marker = head.find(b"content-length:")
        length = int(head[marker + 15 :].split(b"\r\n", 1)[0]) if marker >= 0 else 0
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        waiting, self._waiting = self._waiting, None
        waiting.set_result(body)

    def request(self, payload: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None
        self._waiting = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self._waiting


async def with_raw(host: str, port: int, path: str, requests: int, concurrency: int) -> float:
    loop = asyncio.get_running_loop()
    pool: list[_Raw] = []
    for _ in range(concurrency):
        _, protocol = await loop.create_connection(_Raw, host, port)
        pool.append(protocol)
    payload = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: bench\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY

    async def one() -> None:
        protocol = pool.pop()
        try:
            await protocol.request(payload)
        finally:
            pool.append(protocol)

    try:
        return await _measure(one, requests, concurrency)
    finally:
        for protocol in pool:
            if protocol.transport is not None:
                protocol.transport.close()


async def with_pool(url: str, requests: int, concurrency: int) -> float:
    """The gateway's client, as a try uses it (gateway.upstream.attempt.open_upstream)."""
    settings = PoolSettings(max_connections=1024, keepalive=60, connect_timeout=5)
    base, path = url.rsplit("/v1/", 1)
    pool = UpstreamPool(base, settings)
    headers = {"Content-Type": "application/json", "X-Request-ID": "bench"}

    async def one() -> None:
        response = await pool.post("/v1/" + path, headers, BODY, 60.0)
        try:
            await response.read()
        finally:
            response.release()

    try:
        return await _measure(one, requests, concurrency)
    finally:
        await pool.close()


async def _measure(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> float:
    """CPU µs of this process per request, `concurrency` requests at a time."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency // 10)))  # warm-up
    left = requests
    before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - before) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    upstream_cpu, client_cpu = (0, 1) if cores >= 2 else (None, None)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    port = free_port()
    command = [sys.executable, "-m", "ops.bench.upstream", "--port", str(port)]
    process = subprocess.Popen(
        pinned(command, upstream_cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, process)
        path = "/v1/chat/completions"
        url = f"http://127.0.0.1:{port}{path}"
        results: dict[str, list[float]] = {
            "aiohttp ClientSession": [],
            "actors.backend.pool": [],
            "raw protocol": [],
        }
        for _ in range(args.rounds):
            results["aiohttp ClientSession"].append(
                uvloop.run(with_aiohttp(url, args.requests, args.concurrency))
            )
            results["actors.backend.pool"].append(
                uvloop.run(with_pool(url, args.requests, args.concurrency))
            )
            results["raw protocol"].append(
                uvloop.run(with_raw("127.0.0.1", port, path, args.requests, args.concurrency))
            )
    finally:
        process.terminate()
        process.wait()
    print(f"\n{args.requests} requests, {args.concurrency} at a time, {args.rounds} rounds")
    print("\n| client | CPU per request (median) | rounds |")
    print("|---|---:|---|")
    for name, runs in results.items():
        ordered = sorted(runs)
        rounds = ", ".join(f"{r:.1f}" for r in runs)
        print(f"| {name} | {ordered[len(ordered) // 2]:.1f} µs | {rounds} |")


if __name__ == "__main__":
    main()
