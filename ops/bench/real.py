"""Time to first token and tokens per second against real model servers, directly and
through the gateway, interleaved (direct, gateway, direct, ...) so that both see the same
machine:

    python -m ops.bench.real [--streams 10] [--max-tokens 64]

For each server kind (llama-server, llama-cpp-python, SmolLM2-135M on one thread each, as
installed by `make real-servers`), the gateway runs as its own process
(`citadel-gateway serve`) in front of one replica. Each stream asks for the same prompt at
temperature 0; TTFT is the time to the first event with generated text, tokens/s the text
events after it over the time they took. Medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from ops.bench.run import free_port, wait_listening
from ops.real_servers.processes import SERVED_NAME, Installed, start

KEY = "sk-bench-real-0123456789"
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


async def one_stream(
    http: aiohttp.ClientSession, url: str, model: str, max_tokens: int
) -> tuple[float, float]:
    """(seconds to the first text event, text events per second after it)."""
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first = last = 0.0
    events = 0
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content":' in line.replace(b": ", b":"):
                if b'"content":null' in line.replace(b": ", b":") or b'"content":""' in line:
                    continue
                last = time.perf_counter()
                if not events:
                    first = last
                events += 1
    rate = (events - 1) / (last - first) if events > 1 and last > first else 0.0
    return first - started, rate


Figures = dict[str, dict[str, float]]


async def compare(direct: str, gateway: str, model: str, streams: int, max_tokens: int) -> Figures:
    timeout = aiohttp.ClientTimeout(total=300)
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway": []}
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await one_stream(http, direct, SERVED_NAME, 4)  # warm the prompt cache alike
        await one_stream(http, gateway, model, 4)
        for _ in range(streams):
            results["direct"].append(await one_stream(http, direct, SERVED_NAME, max_tokens))
            results["gateway"].append(await one_stream(http, gateway, model, max_tokens))
    return {
        name: {
            "ttft_ms": round(statistics.median(t for t, _ in runs) * 1000, 1),
            "tokens_per_s": round(statistics.median(r for _, r in runs), 1),
        }
        for name, runs in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    installed = Installed.find()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for kind, public in (("llama-cpp", "smol-cpp"), ("llama-cpp-python", "smol-py")):
            server = start(installed, kind, work, kind)
            port = free_port()
            config = {
                "listen": f"127.0.0.1:{port}",
                "auth": {"api_keys": [KEY]},
                "logging": {"access_log": False, "level": "warning"},
                "models": [
                    {
                        "name": public,
                        "context_window": 2048,
                        "backends": [{"url": server.url, "kind": kind, "model": SERVED_NAME}],
                    }
                ],
            }
            path = work / f"{kind}.yaml"
            path.write_text(yaml.safe_dump(config))
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_listening(port, gateway)
                found = asyncio.run(
                    compare(
                        server.url,
                        f"http://127.0.0.1:{port}",
                        public,
                        args.streams,
                        args.max_tokens,
                    )
                )
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
                server.stop()
            print(report(kind, found))


def report(kind: str, found: Figures) -> str:
    direct, through = found["direct"], found["gateway"]
    added = through["ttft_ms"] - direct["ttft_ms"]
    return (
        f"{kind:17} direct: TTFT {direct['ttft_ms']:7.1f} ms, {direct['tokens_per_s']:6.1f} tok/s"
        f" | gateway: TTFT {through['ttft_ms']:7.1f} ms, {through['tokens_per_s']:6.1f} tok/s"
        f" | TTFT {added:+.1f} ms"
    )


if __name__ == "__main__":
    main()
