"""Interleaved wrk rounds over several targets, and their table of medians (shared by the
benchmarks that compare gateway configurations: ops.bench.limits, ops.bench.cache)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from ops.bench.run import Load
from ops.bench.run import wrk as run_wrk


def measure(
    targets: dict[str, tuple[int, Path]], rounds: int, duration: float, load_cpu: int | None
) -> dict[str, list[tuple[Load, Load]]]:
    """Each target (name: port, wrk script) at concurrency 1 and 100, one after the other,
    `rounds` times, after a warm-up of each."""
    for port, script in targets.values():
        run_wrk(port, 10, 2, script, load_cpu)
    results: dict[str, list[tuple[Load, Load]]] = {name: [] for name in targets}
    for round_number in range(rounds):
        for name, (port, script) in targets.items():
            single = run_wrk(port, 1, duration, script, load_cpu)
            hundred = run_wrk(port, 100, duration, script, load_cpu)
            results[name].append((single, hundred))
            print(f"round {round_number + 1}: measured {name}", file=sys.stderr)
    return results


def print_medians(results: dict[str, list[tuple[Load, Load]]], first_column: str) -> None:
    print(f"| {first_column} | c=1 p50 ms | c=1 p99 ms | c=100 req/s | errors |")
    print("|---|---:|---:|---:|---:|")
    for name, measured in results.items():
        p50 = statistics.median(single.p50_ms for single, _ in measured)
        p99 = statistics.median(single.p99_ms for single, _ in measured)
        rps = statistics.median(hundred.rps for _, hundred in measured)
        errors = sum(single.errors + hundred.errors for single, hundred in measured)
        print(f"| {name} | {p50:.3f} | {p99:.3f} | {rps:,.0f} | {errors} |")
