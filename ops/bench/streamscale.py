"""Streams at scale: thousands of concurrent streams, held open, through the bare
passthrough and the gateway, side by side in one run.

    python -m ops.bench.streamscale [--streams 6000] [--rate 400] [--rounds 2]

Clients open one connection each at `--rate` a second and read a stream of `--events`
events `--interval-ms` apart (the first after 20 ms): with the defaults, 6,000 streams
opened over 15 s and each held 22 s, so all are open at once at the peak. Reported per
target: streams completed, TTFT p50 / p99 (from the client's connect), the peak resident
memory and the CPU time of the process under test. Each round starts every target afresh
(its peak memory is its own), the targets one after the other.

The gateway runs with production settings (ops.bench.run.production_config) and, since
every client comes from one address to one replica, the per-client connection limit, the
replica's max_in_flight and its pool raised to the streams held; the passthrough's pool is
raised the same. Every process gets a file-descriptor limit for two sockets per stream.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import uvloop

from ops.bench.procstat import cpu_seconds, peak_rss_mb
from ops.bench.run import (
    CHAT,
    LIMITED_KEY,
    PATH,
    free_port,
    pinned,
    production_config,
    wait_listening,
)
from ops.bench.streamload import open_streams


@dataclass
class ScaleRun:
    completed: int
    errors: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    peak_rss_mb: float
    cpu_s: float
    failures: list[str]


def _raise_fd_limit(streams: int) -> None:
    """Room for two sockets a stream, up to the hard limit (raising that needs
    CAP_SYS_RESOURCE, which a container may not grant: then `--workers` spreads them)."""
    wanted = 2 * streams + 4096
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def measure(
    command: list[str], port: int, args: argparse.Namespace, env: dict[str, str]
) -> ScaleRun:
    """Start the target afresh, drive the streams through it, stop it."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _raise_fd_limit(args.streams),
    )
    try:
        wait_listening(port, process)
        body = json.dumps({**CHAT, "stream": True}).encode()
        before = cpu_seconds(process.pid)
        results = uvloop.run(
            open_streams(
                "127.0.0.1", port, PATH, body,
                total=args.streams, rate=args.rate, api_key=LIMITED_KEY,
                timeout=args.read_timeout,
            )
        )  # fmt: skip
        return ScaleRun(
            completed=len(results.totals),
            errors=results.errors,
            ttft_p50_ms=statistics.median(results.ttfts or [float("nan")]) * 1000,
            ttft_p99_ms=_percentile(results.ttfts, 0.99) * 1000,
            peak_rss_mb=peak_rss_mb(process.pid),
            cpu_s=cpu_seconds(process.pid) - before,
            failures=results.failures,
        )
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=400.0, help="streams opened a second")
    parser.add_argument("--events", type=int, default=16)
    parser.add_argument("--interval-ms", type=float, default=1500.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--read-timeout", type=float, default=30.0)
    parser.add_argument("--no-passthrough", action="store_true")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes (limits then in --redis): each holds its share of the streams",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    _raise_fd_limit(args.streams)
    cores = os.cpu_count() or 1
    load_cpu, target_cpu = (0, 1) if cores >= 2 else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this process runs the clients
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    upstream, passthrough, gateway = free_port(), free_port(), free_port()
    targets: dict[str, tuple[list[str], int]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        config = Path(tmp) / "gateway.yaml"
        config.write_text(
            production_config(
                gateway,
                upstream,
                concurrency=args.streams,
                workers=args.workers,
                redis=args.redis if args.workers > 1 else None,
            )
        )
        upstream_command = [
            python, "-m", "ops.bench.upstream", "--port", str(upstream),
            "--chunks", str(args.events), "--interval-ms", str(args.interval_ms),
        ]  # fmt: skip
        process = subprocess.Popen(
            pinned(upstream_command, load_cpu),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _raise_fd_limit(args.streams),
        )
        stack.callback(process.wait)
        stack.callback(process.terminate)
        wait_listening(upstream, process)
        if not args.no_passthrough:
            targets["passthrough"] = (
                [
                    python, "-m", "ops.bench.passthrough", "--port", str(passthrough),
                    "--upstream", f"http://127.0.0.1:{upstream}",
                    "--max-connections", str(args.streams + 1000),
                ],
                passthrough,
            )  # fmt: skip
        targets["gateway"] = ([python, "-m", "gateway", "serve", "--config", str(config)], gateway)
        runs: dict[str, list[ScaleRun]] = {name: [] for name in targets}
        for round_number in range(args.rounds):
            for name, (command, port) in targets.items():
                run = measure(pinned(command, target_cpu), port, args, env)
                runs[name].append(run)
                print(f"round {round_number + 1}: {name}: {run}", file=sys.stderr, flush=True)
    report(runs, args)


def report(runs: dict[str, list[ScaleRun]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.streams} streams opened at {args.rate:g}/s, {args.events} events "
        f"{args.interval_ms:g} ms apart; {args.rounds} rounds, medians (completed: the least)"
    )
    print("\n| target | completed | errors | TTFT p50 | TTFT p99 | peak RSS | CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians: dict[str, tuple[float, float]] = {}
    for name, measured in runs.items():
        p50 = statistics.median(r.ttft_p50_ms for r in measured)
        p99 = statistics.median(r.ttft_p99_ms for r in measured)
        rss = max(r.peak_rss_mb for r in measured)
        cpu = statistics.median(r.cpu_s for r in measured)
        completed = min(r.completed for r in measured)
        errors = sum(r.errors for r in measured)
        medians[name] = (p50, p99)
        print(
            f"| {name} | {completed:,} / {args.streams:,} | {errors} | {p50:.1f} ms "
            f"| {p99:.1f} ms | {rss:.0f} MB | {cpu:.1f} s |"
        )
        for failure in sorted({f for r in measured for f in r.failures}):
            print(f"  - {name}: {failure}")
    if "passthrough" in medians:
        (pp50, pp99), (gp50, gp99) = medians["passthrough"], medians["gateway"]
        print(f"\n- TTFT gateway / passthrough: p50 {gp50 / pp50:.2f}x, p99 {gp99 / pp99:.2f}x")


if __name__ == "__main__":
    main()
