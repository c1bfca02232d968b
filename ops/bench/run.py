"""The side-by-side benchmark: the upstream alone, a bare aiohttp passthrough, and the
gateway, measured in one run on this machine, with ratios.

    python -m ops.bench.run [--duration 10] [--streams-per-connection 20]

Non-streaming load comes from wrk (Debian package `wrk`) at concurrency 1 and 100;
streaming load from ops/bench/streamload.py with 100 concurrent streams. Each target runs
in its own process; they are measured one after the other, never at the same time, in
interleaved rounds, and each figure is the median over the rounds. Besides requests a
second, the CPU time the process under test spent per request (ops/bench/procstat.py) is
reported: on a shared machine it moves far less than the wall clock.

The gateway runs with production settings: a key with limits (kept in the process, or in
Redis with --redis), metrics, the JSON access log at info level.

On a machine with two or more cores, the process under test (passthrough or gateway) is
pinned to its own core and the load generators and the upstream to another, so that the
scheduler's choices do not decide the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import uvloop
import yaml

from actors.auth.keys import hash_secret
from ops.bench.procstat import cpu_seconds
from ops.bench.streamload import run_streams

API_KEY = "sk-bench-0123456789abcdef"
PATH = "/v1/chat/completions"
CHAT = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 16,
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "errors": %%d, ' ..
    '"p50_us": %%d, "p99_us": %%d, "mean_us": %%f}\\n',
    summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""
# The benchmark's key: a configured key with limits far above the load, so every request is
# admitted and charged (production's path), never refused.
KEY_ID = "be0c4b0e4c40"
KEY_SECRET = "b" * 43
LIMITED_KEY = f"sk-citadel-{KEY_ID}-{KEY_SECRET}"
LIMITS: dict[str, object] = {
    "rpm": 100_000_000,
    "tpm": 1_000_000_000_000,
    "max_concurrent": 100_000,
}
# A plain key with no limits, for the benchmarks that measure other things (ops.bench.workers).
GATEWAY_CONFIG = """
listen: "127.0.0.1:%(port)d"
auth:
  api_keys: ["%(key)s"]
logging:
  level: info
  format: json
  access_log: %(access_log)s
models:
  - name: bench-model
    backends:
      - url: http://127.0.0.1:%(upstream)d
        model: bench/upstream-model
"""


def production_config(
    port: int,
    upstream: int,
    *,
    access_log: bool = True,
    redis: str | None = None,
    concurrency: int | None = None,
    workers: int = 1,
) -> str:
    """The gateway as production runs it: a key with limits, metrics, the access log.
    `concurrency`: the open streams to hold, from one client address to one replica (the
    per-client connection limit, the replica's max_in_flight and pool raised to it)."""
    key = {"id": KEY_ID, "secret_sha256": hash_secret(KEY_SECRET), "scopes": LIMITS}
    backend: dict[str, object] = {
        "url": f"http://127.0.0.1:{upstream}",
        "model": "bench/upstream-model",
    }
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{port}",
        "auth": {"keys": [key]},
        "limits": {"redis_url": redis} if redis else {},
        "logging": {"level": "info", "format": "json", "access_log": access_log},
        "models": [{"name": "bench-model", "backends": [backend]}],
        "workers": workers,
    }
    if concurrency is not None:
        room = concurrency + 1000
        config["connections"] = {"max_connections": room, "max_connections_per_client": room}
        backend["max_in_flight"] = room
        backend["pool"] = {"max_connections": room}
    return yaml.safe_dump(config)


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = float("nan")  # CPU time of the process under test per request


@dataclass
class StreamLoad:
    ttft_p50_ms: float
    ttft_p99_ms: float
    stream_p50_ms: float
    streams_per_s: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def pinned(command: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", str(cpu), *command]


def wrk(
    port: int,
    connections: int,
    duration: float,
    script: Path,
    cpu: int | None,
    target_pid: int | None = None,
) -> Load:
    """One wrk run; with `target_pid`, the CPU that process (and its children) spent on it,
    per request."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "-s", str(script), f"http://127.0.0.1:{port}{PATH}",
    ]  # fmt: skip
    before = cpu_seconds(target_pid) if target_pid is not None else 0.0
    output = subprocess.run(pinned(command, cpu), check=True, capture_output=True, text=True).stdout
    spent = cpu_seconds(target_pid) - before if target_pid is not None else float("nan")
    data = json.loads(output.strip().splitlines()[-1])
    return Load(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["errors"],
        cpu_us=spent / max(1, data["requests"]) * 1e6,
    )


def streams(port: int, concurrency: int, per_connection: int) -> StreamLoad:
    body = json.dumps({**CHAT, "stream": True}).encode()
    results = uvloop.run(
        run_streams(
            "127.0.0.1", port, PATH, body,
            concurrency=concurrency, per_connection=per_connection, api_key=LIMITED_KEY,
        )
    )  # fmt: skip
    ttfts = sorted(results.ttfts) or [float("nan")]
    return StreamLoad(
        ttft_p50_ms=statistics.median(ttfts) * 1000,
        ttft_p99_ms=ttfts[int(len(ttfts) * 0.99) - 1] * 1000 if len(ttfts) > 1 else ttfts[0] * 1000,
        stream_p50_ms=statistics.median(results.totals or [float("nan")]) * 1000,
        streams_per_s=len(results.totals) / results.elapsed,
        errors=results.errors,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--streams-per-connection", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--token-interval-ms", type=float, default=20.0, help="upstream gap between stream events"
    )
    parser.add_argument("--chunks", type=int, default=16, help="events per upstream stream")
    parser.add_argument("--no-access-log", action="store_true", help="gateway without access log")
    parser.add_argument("--redis", help="keep the key's limits in this Redis (redis://...)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `make bench` installs it (apt-get install wrk)")

    ports = {"upstream": free_port(), "passthrough": free_port(), "gateway": free_port()}
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        script = work / "chat.lua"
        script.write_text(WRK_SCRIPT % {"body": json.dumps(CHAT), "key": LIMITED_KEY})
        config = work / "gateway.yaml"
        config.write_text(
            production_config(
                ports["gateway"],
                ports["upstream"],
                access_log=not args.no_access_log,
                redis=args.redis,
            )
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        commands = {
            "upstream": [
                python, "-m", "ops.bench.upstream", "--port", str(ports["upstream"]),
                "--interval-ms", str(args.token_interval_ms), "--chunks", str(args.chunks),
            ],
            "passthrough": [
                python, "-m", "ops.bench.passthrough", "--port", str(ports["passthrough"]),
                "--upstream", f"http://127.0.0.1:{ports['upstream']}",
            ],
            "gateway": [python, "-m", "gateway", "serve", "--config", str(config)],
        }  # fmt: skip
        cores = os.cpu_count() or 1
        load_cpu, target_cpu = (0, 1) if cores >= 2 else (None, None)
        if load_cpu is not None:
            os.sched_setaffinity(0, {load_cpu})  # this process runs the stream client
        pids: dict[str, int] = {}
        for name, command in commands.items():
            cpu = load_cpu if name == "upstream" else target_cpu
            process = subprocess.Popen(
                pinned(command, cpu), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            stack.callback(process.wait)
            stack.callback(process.terminate)
            wait_listening(ports[name], process)
            pids[name] = process.pid  # taskset execs: the same process

        rounds: dict[str, list[tuple[Load, Load, StreamLoad]]] = {name: [] for name in ports}
        for round_number in range(args.rounds):
            for name in ("upstream", "passthrough", "gateway"):
                port = ports[name]
                wrk(port, 10, 2, script, load_cpu)  # warm-up: connections, lazy imports
                # and for streams: the first 100 at once also open 100 upstream connections
                # and take every stream path's first time; what is measured is what follows.
                streams(port, args.concurrency, 2)
                single = wrk(port, 1, args.duration, script, load_cpu, pids[name])
                hundred = wrk(port, args.concurrency, args.duration, script, load_cpu, pids[name])
                stream = streams(port, args.concurrency, args.streams_per_connection)
                rounds[name].append((single, hundred, stream))
                print(f"round {round_number + 1}: measured {name}", file=sys.stderr, flush=True)
    results = {name: median_of(measured) for name, measured in rounds.items()}
    report(results, args)
    print(spread(rounds))


def median_of(
    measured: list[tuple[Load, Load, StreamLoad]],
) -> tuple[Load, Load, StreamLoad]:
    def load(index: int) -> Load:
        runs = [m[index] for m in measured]
        assert all(isinstance(r, Load) for r in runs)
        return Load(
            rps=statistics.median(r.rps for r in runs),  # type: ignore[union-attr]
            p50_ms=statistics.median(r.p50_ms for r in runs),  # type: ignore[union-attr]
            p99_ms=statistics.median(r.p99_ms for r in runs),  # type: ignore[union-attr]
            errors=sum(r.errors for r in runs),
            cpu_us=statistics.median(r.cpu_us for r in runs),  # type: ignore[union-attr]
        )

    streams_ = [m[2] for m in measured]
    return (
        load(0),
        load(1),
        StreamLoad(
            ttft_p50_ms=statistics.median(s.ttft_p50_ms for s in streams_),
            ttft_p99_ms=statistics.median(s.ttft_p99_ms for s in streams_),
            stream_p50_ms=statistics.median(s.stream_p50_ms for s in streams_),
            streams_per_s=statistics.median(s.streams_per_s for s in streams_),
            errors=sum(s.errors for s in streams_),
        ),
    )


def spread(rounds: dict[str, list[tuple[Load, Load, StreamLoad]]]) -> str:
    """How far the c=100 ratios moved from round to round: a machine shared with others
    moves the medians by as much, and a target met by less than this is not yet met."""
    pairs = list(zip(rounds["gateway"], rounds["passthrough"], strict=True))
    cpu = sorted(g[1].cpu_us / p[1].cpu_us for g, p in pairs)
    throughput = sorted(g[1].rps / p[1].rps for g, p in pairs)
    return (
        f"- per round at c=100, gateway / passthrough: CPU {cpu[0]:.2f}x to {cpu[-1]:.2f}x, "
        f"throughput {throughput[0]:.2f}x to {throughput[-1]:.2f}x ({len(pairs)} rounds)"
    )


def report(results: dict[str, tuple[Load, Load, StreamLoad]], args: argparse.Namespace) -> None:
    c = args.concurrency
    print(
        f"\nstreams: {args.chunks} events, first after 20 ms, then every "
        f"{args.token_interval_ms:g} ms; {args.streams_per_connection} streams per connection"
    )
    print(
        f"\n| target | c=1 rps | c=1 p50 | c=1 p99 | c={c} rps | c={c} p50 | c={c} p99 "
        f"| CPU/request c=1 | c={c} | {c} streams: TTFT p50 | TTFT p99 | stream p50 | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (single, hundred, stream) in results.items():
        errors = single.errors + hundred.errors + stream.errors
        print(
            f"| {name} | {single.rps:,.0f} | {single.p50_ms:.3f} ms | {single.p99_ms:.3f} ms "
            f"| {hundred.rps:,.0f} | {hundred.p50_ms:.2f} ms | {hundred.p99_ms:.2f} ms "
            f"| {single.cpu_us:.0f} µs | {hundred.cpu_us:.0f} µs "
            f"| {stream.ttft_p50_ms:.2f} ms | {stream.ttft_p99_ms:.2f} ms "
            f"| {stream.stream_p50_ms:.1f} ms | {errors} |"
        )
    up, passthrough, gateway = results["upstream"], results["passthrough"], results["gateway"]
    throughput = gateway[1].rps / passthrough[1].rps
    cpu_ratio = gateway[1].cpu_us / passthrough[1].cpu_us
    added = gateway[0].p50_ms - up[0].p50_ms
    added_passthrough = passthrough[0].p50_ms - up[0].p50_ms
    ttft_ratio = gateway[2].ttft_p50_ms / passthrough[2].ttft_p50_ms
    ttft_p99_ratio = gateway[2].ttft_p99_ms / passthrough[2].ttft_p99_ms
    ttft_added = gateway[2].ttft_p50_ms - up[2].ttft_p50_ms
    print()
    print(f"- throughput at c={c}, gateway / passthrough: {throughput:.2f}x")
    print(f"- CPU per request at c={c}, gateway / passthrough: {cpu_ratio:.2f}x")
    print(
        f"- added latency at c=1, p50: gateway {added:.3f} ms, "
        f"passthrough {added_passthrough:.3f} ms (over the upstream alone)"
    )
    print(
        f"- TTFT p50 at {c} streams, gateway / passthrough: {ttft_ratio:.2f}x "
        f"(gateway adds {ttft_added:.2f} ms over the upstream); p99 {ttft_p99_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
