"""What a process under test spends, read from /proc: CPU time and peak resident memory,
over the process and its children (a gateway with workers is one target).

CPU time per request is steadier than requests per second on a shared, noisy machine: a
neighbour's load stretches the wall clock of a run, not the CPU each request costs.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """The process and its descendants, by /proc/<pid>/task/<tid>/children."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def _files(pid: int, name: str) -> list[str]:
    """/proc/<member>/<name> of every member of the tree still there."""
    texts = []
    for member in _tree(pid):
        try:
            texts.append(Path(f"/proc/{member}/{name}").read_text())
        except OSError:
            continue  # it exited meanwhile
    return texts


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the process tree so far."""
    total = 0
    for stat in _files(pid, "stat"):
        # The fields after the command (which may hold spaces) in parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def peak_rss_mb(pid: int) -> float:
    """The tree's peak resident set (VmHWM, summed), in MiB."""
    total_kb = 0
    for status in _files(pid, "status"):
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024
