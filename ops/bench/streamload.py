"""A lean streaming load generator: N keep-alive connections, each sending streaming chat
requests back to back, measuring time to first token (first `data:` byte) and stream time.

It reads raw bytes and looks only for markers, so its own cost stays small and equal for
every target it measures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked response


@dataclass
class StreamResults:
    ttfts: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    failures: list[str] = field(default_factory=list)  # a few distinct errors, to show


def _request(host: str, port: int, path: str, body: bytes, api_key: str | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connection(
    host: str, port: int, request: bytes, count: int, results: StreamResults
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                # An error answer (JSON with a Content-Length): count it and go on.
                results.errors += 1
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                continue
            await _read_stream(reader, started, results, None)
    finally:
        writer.close()


async def _read(reader: asyncio.StreamReader, timeout: float | None) -> bytes:
    if timeout is None:
        return await reader.read(65536)
    return await asyncio.wait_for(reader.read(65536), timeout)


async def _read_stream(
    reader: asyncio.StreamReader, started: float, results: StreamResults, timeout: float | None
) -> None:
    """A stream's body, after its head: the time to its first event and to its end."""
    buffer = b""
    while b"data:" not in buffer:
        chunk = await _read(reader, timeout)
        if not chunk:
            raise ConnectionError("closed before the first event")
        buffer += chunk
    first = time.perf_counter()
    while not buffer.endswith(_END):
        chunk = await _read(reader, timeout)
        if not chunk:
            raise ConnectionError("closed mid-stream")
        buffer = buffer[-16:] + chunk
    results.ttfts.append(first - started)
    results.totals.append(time.perf_counter() - started)


async def run_streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    concurrency: int,
    per_connection: int,
    api_key: str | None = None,
) -> StreamResults:
    results = StreamResults()
    request = _request(host, port, path, body, api_key)
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(_connection(host, port, request, per_connection, results) for _ in range(concurrency)),
        return_exceptions=True,
    )
    results.elapsed = time.perf_counter() - started
    results.errors += sum(1 for outcome in outcomes if isinstance(outcome, BaseException))
    return results


async def _one_stream(
    host: str, port: int, request: bytes, results: StreamResults, timeout: float
) -> None:
    """One client: connect, send one streaming request, read the stream to its end."""
    started = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        await _read_stream(reader, started, results, timeout)
    finally:
        writer.close()


async def open_streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    total: int,
    rate: float,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> StreamResults:
    """`total` clients, each on its own connection, opened at `rate` a second and held for
    their stream's length: at the peak, every stream still open at once. `timeout` bounds
    each read (a stream that stalls that long counts as an error)."""
    results = StreamResults()
    request = _request(host, port, path, body, api_key)
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for index in range(total):
        delay = started + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one_stream(host, port, request, results, timeout)))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    results.elapsed = loop.time() - started
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    results.errors += len(failures)
    results.failures = sorted({type(f).__name__ + ": " + str(f)[:80] for f in failures})[:5]
    return results
