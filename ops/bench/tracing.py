"""What tracing costs a request: the gateway with tracing off, on with every trace sampled
(exported to an OTLP/HTTP receiver in the same process), and on with none sampled, side by
side in interleaved rounds.

    python -m ops.bench.tracing [--requests 2000] [--rounds 3]

Each round sends `--requests` non-streaming requests one at a time (c=1) through each
gateway in turn and reports the median latency, and the process's CPU time per request (the
client, the mock model service, the receiver and the gateway share the process: the
differences between the configurations are the gateway's, its exporter thread's included).

Then the request path alone: a request's spans (the request, three steps, one try, its
events and attributes) made and ended, with no exporter, sampled and not.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from gateway.mock.server import MockSettings, create_mock_app
from gateway.process.config import GatewayConfig
from gateway.process.server import RunningServer, start_gateway, start_server

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
SETUPS = {
    "off": {},
    "on, sampling 1.0": {"enabled": True, "sampling_ratio": 1.0},
    "on, sampling 0.0": {"enabled": True, "sampling_ratio": 0.0},
}


async def _receiver() -> tuple[RunningServer, list[int]]:
    received: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", handle)
    return await start_server(app, "127.0.0.1", 0), received


async def _run(requests: int, rounds: int) -> None:
    mock = await start_server(
        create_mock_app(MockSettings(model="m", ttft=0.0, tokens_per_s=1e6, length=8)),
        "127.0.0.1",
        0,
    )
    receiver, received = await _receiver()
    gateways: dict[str, RunningServer] = {}
    for name, tracing in SETUPS.items():
        config: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "logging": {"access_log": True, "level": "warning"},
            "models": [{"name": "m", "backends": [{"url": mock.url}]}],
            "tracing": {**tracing, "endpoint": f"{receiver.url}/v1/traces"} if tracing else {},
        }
        gateways[name] = await start_gateway(GatewayConfig.model_validate(config))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in SETUPS}
    try:
        async with aiohttp.ClientSession() as http:
            for gateway in gateways.values():  # warm-up
                await _round(http, gateway.url, 200)
            for _ in range(rounds):
                for name, gateway in gateways.items():
                    results[name].append(await _round(http, gateway.url, requests))
    finally:
        for gateway in gateways.values():
            await gateway.close()
        await receiver.close()
        await mock.close()
    print("| tracing | p50 latency (ms) | CPU per request (µs) |\n|---|---:|---:|")
    base = statistics.median(cpu for _, cpu in results["off"])
    for name, rows in results.items():
        p50 = statistics.median(latency for latency, _ in rows)
        cpu = statistics.median(cpu for _, cpu in rows)
        extra = "" if name == "off" else f" ({cpu - base:+.0f})"
        print(f"| {name} | {p50:.3f} | {cpu:.0f}{extra} |")
    print(f"\n{len(received)} export batches received ({sum(received)} bytes)")


async def _round(http: aiohttp.ClientSession, url: str, count: int) -> tuple[float, float]:
    """(median latency in ms, process CPU µs per request) of `count` requests, one at a time."""
    latencies = []
    cpu = time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        async with http.post(f"{url}/v1/chat/completions", json=BODY) as response:
            await response.read()
            assert response.status == 200, response.status
        latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    return statistics.median(latencies) * 1000, cpu / count * 1e6


def request_path(count: int) -> None:
    """µs per request of the spans a request makes on its own path (no export)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    from gateway.tracing.request import RequestTrace

    headers = {"content-type": "application/json"}
    print("\n| the request path alone | µs per request |\n|---|---:|")
    for name, sampler in (("sampled", ALWAYS_ON), ("not sampled", ALWAYS_OFF)):
        tracer = TracerProvider(sampler=sampler).get_tracer("bench")
        started = time.perf_counter()
        for _ in range(count):
            trace = RequestTrace(
                tracer, "POST", "/v1/chat/completions", "/v1/chat/completions", headers
            )
            for step in ("authenticate", "route", "admit"):
                with trace.step(step):
                    pass
            trace.try_started("m#0", "http://127.0.0.1:11400", 1)
            trace.upstream_headers()
            trace.first_token()
            trace.try_ended("ok", 200, 16, True)
            trace.finish(200, "m", "m", (5, 16))
        print(f"| {name} | {(time.perf_counter() - started) / count * 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(_run(args.requests, args.rounds))
    request_path(args.requests * 5)


if __name__ == "__main__":
    main()
