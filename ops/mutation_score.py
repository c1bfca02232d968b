"""The mutation score of `make mutation`, per module: what share of mutmut's mutants the fast
tests killed. A mutant no test ran ("no tests") counts as surviving. Exits 1 below the floor.

    python -m ops.mutation_score [--floor 85]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout"}  # a mutant that hangs the tests is caught by their bound


def statuses(mutmut: str) -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    done = subprocess.run(
        [mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True
    )
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status
    return found


def module_of(mutant: str) -> str:
    """`actors.router.balancer.xǁBalancerǁorder__mutmut_4` -> `actors.router.balancer`."""
    parts = mutant.split(".")
    return ".".join(parts[:-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--floor", type=float, default=85.0, help="percent killed required")
    parser.add_argument("--mutmut", default="mutmut", help="the mutmut executable")
    args = parser.parse_args(argv)
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for mutant, status in statuses(args.mutmut).items():
        by_module[module_of(mutant)][status] += 1
    if not by_module:
        print("no mutants found: run `mutmut run` first", file=sys.stderr)
        return 1
    total_killed = total = 0
    print("module".ljust(34), "mutants  killed  survived  untested    score")
    for module in sorted(by_module):
        counts = by_module[module]
        killed = sum(counts[s] for s in KILLED)
        count = sum(counts.values())
        total_killed, total = total_killed + killed, total + count
        print(
            f"{module:34} {count:8} {killed:7} {counts['survived']:9} "
            f"{counts['no tests']:9} {100 * killed / count:6.1f}%"
        )
    score = 100 * total_killed / total
    print(f"{'all':34} {total:8} {total_killed:7} {'':9} {'':9} {score:6.1f}%")
    if score < args.floor:
        print(f"below the floor of {args.floor:.0f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
