"""Throughput of `workers: 2` against `workers: 1` on this machine, in one run.

    python -m ops.bench.workers [--duration 8] [--rounds 3] [--concurrency 100]

The same upstream (ops/bench/upstream.py) behind a gateway with one worker and a gateway
with two, measured one after the other in interleaved rounds with wrk; each figure is the
median over the rounds. Nothing is pinned: the workers, the upstream and wrk share the
machine's cores, as they would on a small host. The report says how many cores there were.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from ops.bench.run import API_KEY, CHAT, GATEWAY_CONFIG, WRK_SCRIPT, Load, free_port, wait_listening
from ops.bench.run import wrk as run_wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    python = sys.executable
    upstream_port = free_port()
    ports = {1: free_port(), 2: free_port()}
    results: dict[int, list[Load]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        script = work / "chat.lua"
        script.write_text(WRK_SCRIPT % {"body": json.dumps(CHAT), "key": API_KEY})
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        processes = [[python, "-m", "ops.bench.upstream", "--port", str(upstream_port)]]
        for workers, port in ports.items():
            config = work / f"gateway-{workers}.yaml"
            text = GATEWAY_CONFIG % {
                "port": port, "upstream": upstream_port, "key": API_KEY, "access_log": "false"
            }  # fmt: skip
            config.write_text(f"workers: {workers}\n{text}")
            processes.append([python, "-m", "gateway", "serve", "--config", str(config)])
        for command, port in zip(processes, [upstream_port, *ports.values()], strict=True):
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            stack.callback(process.wait)
            stack.callback(process.terminate)
            wait_listening(port, process)
        for port in ports.values():
            run_wrk(port, 10, 3, script, None)  # warm-up: every worker up, connections made
        for round_number in range(args.rounds):
            for workers, port in ports.items():
                results[workers].append(
                    run_wrk(port, args.concurrency, args.duration, script, None)
                )
                print(f"round {round_number + 1}: measured {workers} worker(s)", file=sys.stderr)
    report(results, args)


def report(results: dict[int, list[Load]], args: argparse.Namespace) -> None:
    medians = {
        workers: (
            statistics.median(load.rps for load in loads),
            statistics.median(load.p50_ms for load in loads),
            statistics.median(load.p99_ms for load in loads),
            sum(load.errors for load in loads),
        )
        for workers, loads in results.items()
    }
    print(
        f"cores: {os.cpu_count()}; c={args.concurrency}; {args.rounds} rounds of {args.duration}s"
    )
    print("| workers | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for workers, (rps, p50, p99, errors) in medians.items():
        print(f"| {workers} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} |")
    print(f"2 workers / 1 worker throughput: {medians[2][0] / medians[1][0]:.2f}x")


if __name__ == "__main__":
    main()
