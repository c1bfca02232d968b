"""What the response cache costs and saves: a hit against a miss and against the upstream
alone, and the exact lookup's own cost on a miss.

    python -m ops.bench.cache [--duration 5] [--rounds 3] [--redis redis://127.0.0.1:6379/0]

Over HTTP (wrk, a 2 KB deterministic prompt): the upstream alone; the gateway without a
cache; the gateway with its cache in memory and in Redis, each under misses only (every
request's prompt differs, so each is looked up, forwarded and stored) and hits only (one
prompt, answered from the cache). Interleaved rounds, medians; pinned as in ops.bench.run.

In the process: the lookup on a miss (the request's fingerprint and the store's get) timed
over many calls, in memory and in Redis (one round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
import yaml
from prometheus_client import CollectorRegistry

from actors.auth.keys import hash_secret
from gateway.cache.fingerprint import fingerprint
from gateway.cache.metrics import CacheMetrics
from gateway.cache.settings import CacheSettings
from gateway.cache.store import ResponseCache
from gateway.cache.vectors import MemoryVectors
from ops.bench.rounds import measure, print_medians
from ops.bench.run import WRK_SCRIPT, free_port, pinned, wait_listening

SECRET = "c" * 43
PROMPT = "Summarise the following notes. " + "The quarterly figures were steady. " * 56
DONE_FUNCTION = WRK_SCRIPT[WRK_SCRIPT.index("done = function") :].replace("%%", "%")
# Every request's prompt differs: a counter in the body (a miss each time), starting where
# no earlier run of the script (a warm-up, an earlier round) has been.
MISSES_SCRIPT = """
math.randomseed(os.time())
counter = os.time() * 1000000 + math.random(0, 999999) * 1000
request = function()
  counter = counter + 1
  local body = '%(head)s' .. counter .. '%(tail)s'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %(key)s"}, body)
end
"""
HITS_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
"""


def body(prompt: str) -> dict[str, Any]:
    return {
        "model": "bench-model",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
        "temperature": 0,
    }


def gateway_config(port: int, upstream: int, key_id: str, cache: dict[str, Any] | None) -> str:
    model: dict[str, Any] = {
        "name": "bench-model",
        "backends": [{"url": f"http://127.0.0.1:{upstream}", "model": "bench/upstream-model"}],
    }
    if cache is not None:
        model["cache"] = {"enabled": True}
    return yaml.safe_dump(
        {
            "listen": f"127.0.0.1:{port}",
            "auth": {"keys": [{"id": key_id, "secret_sha256": hash_secret(SECRET)}]},
            "logging": {"format": "json", "access_log": True},
            "cache": cache or {},
            "models": [model],
        }
    )


async def lookup_cost(settings: CacheSettings, calls: int) -> float:
    """Microseconds per miss lookup: parse, fingerprint, get."""
    cache = ResponseCache(settings, CacheMetrics(CollectorRegistry()))
    raw = json.dumps(body(PROMPT)).encode()
    try:
        await cache.get("warm-up")
        started = time.perf_counter()
        for number in range(calls):
            key = f"key:bench:{fingerprint(json.loads(raw), '/v1/chat/completions', str(number))}"
            assert await cache.get(key) is None
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        await cache.close()


async def semantic_search_cost(entries: int, calls: int) -> float:
    """Milliseconds per search of one partition of `entries` 384-d questions (the embedding
    call comes on top: a round trip to the embedding model, and its compute)."""
    rng = np.random.default_rng(3)
    index = MemoryVectors(max_entries=entries)
    vectors = rng.standard_normal((entries, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for number, vector in enumerate(vectors):
        index.add("p", vector.tolist(), f"k{number}", "q", ttl=3600)
    started = time.perf_counter()
    for number in range(calls):
        assert await index.nearest("p", vectors[number % entries].tolist()) is not None
    return (time.perf_counter() - started) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    key_id = secrets.token_hex(6)  # a fresh namespace in the shared Redis
    key = f"sk-citadel-{key_id}-{SECRET}"
    upstream = free_port()
    memory = {"backend": "memory"}
    redis = {"backend": "redis", "redis_url": args.redis, "ttl": 120}
    gateways = {"no cache": None, "memory": memory, "redis": redis}
    ports = {name: free_port() for name in gateways}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        head, tail = json.dumps(body(PROMPT + " #COUNTER")).split("#COUNTER")
        misses = work / "misses.lua"
        misses.write_text(MISSES_SCRIPT % {"head": head, "tail": tail, "key": key} + DONE_FUNCTION)
        hits = work / "hits.lua"
        hits.write_text(
            HITS_SCRIPT % {"body": json.dumps(body(PROMPT)), "key": key} + DONE_FUNCTION
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        load_cpu, target_cpu = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)
        upstream_command = [sys.executable, "-m", "ops.bench.upstream", "--port", str(upstream)]
        commands = [(pinned(upstream_command, load_cpu), upstream)]
        for name, cache in gateways.items():
            path = work / f"gateway-{name.replace(' ', '-')}.yaml"
            path.write_text(gateway_config(ports[name], upstream, key_id, cache))
            serve = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
            commands.append((pinned(serve, target_cpu), ports[name]))
        for command, port in commands:
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            stack.callback(process.wait)
            stack.callback(process.terminate)
            wait_listening(port, process)
        targets: dict[str, tuple[int, Path]] = {"upstream alone": (upstream, hits)}
        targets["gateway, no cache: one prompt"] = (ports["no cache"], hits)
        targets["gateway, no cache: every prompt new"] = (ports["no cache"], misses)
        for name in ("memory", "redis"):
            targets[f"gateway, cache in {name}: misses"] = (ports[name], misses)
            targets[f"gateway, cache in {name}: hits"] = (ports[name], hits)
        # The warm-up also stores the hits' one entry.
        results = measure(targets, args.rounds, args.duration, load_cpu)
    print(f"{args.rounds} rounds of {args.duration}s; medians; a 2 KB deterministic prompt")
    print_medians(results, "target")
    in_memory = uvloop.run(lookup_cost(CacheSettings(), 20_000))
    in_redis = uvloop.run(lookup_cost(CacheSettings(backend="redis", redis_url=args.redis), 5_000))
    print(f"\n- the lookup on a miss (parse, fingerprint, get), in memory: {in_memory:.1f} µs")
    print(f"- the lookup on a miss, in Redis (one round trip): {in_redis:.1f} µs")
    for entries in (1_000, 10_000):
        search = uvloop.run(semantic_search_cost(entries, 500))
        print(f"- a semantic search of {entries:,} questions, in memory: {search:.2f} ms")


if __name__ == "__main__":
    main()
