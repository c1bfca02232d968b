"""Where the gateway's CPU goes under load: py-spy samples the gateway (production settings,
as in ops.bench.run) while wrk drives it, and the samples are summed by function.

    python -m ops.bench.profile [--concurrency 100] [--duration 15] [--top 40] [--out DIR]

Prints two tables: self time (the function on top of the stack) and inclusive time (the
function anywhere in the stack), each as a share of all samples. The raw collapsed stacks are
kept in DIR (default: a temporary directory) for a flame graph. Needs py-spy
(`pip install py-spy`) and wrk; on two or more cores the gateway is pinned to one core, the
upstream and wrk to the other, as in ops.bench.run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from ops.bench.run import (
    CHAT,
    LIMITED_KEY,
    WRK_SCRIPT,
    free_port,
    pinned,
    production_config,
    wait_listening,
    wrk,
)


def _frame_name(frame: str) -> str:
    """'handle (gateway/http/handlers.py:120)' -> 'gateway/http/handlers.py:handle'; py-spy's
    raw frames carry a line number, which would split one function into many rows."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}"


def summarise(collapsed: Path, top: int) -> str:
    """Self and inclusive shares of the samples in a py-spy `--format raw` file."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            anywhere[name] += count
    rows = [f"{total} samples\n", "self %  function"]
    rows += [f"{100 * n / total:6.2f}  {name}" for name, n in own.most_common(top)]
    rows += ["", "incl %  function"]
    rows += [f"{100 * n / total:6.2f}  {name}" for name, n in anywhere.most_common(top)]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=int, default=15, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="sample without pausing the gateway (less overhead; stacks may come out torn)",
    )
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if shutil.which("wrk") is None or not Path(py_spy).exists():
        sys.exit("needs wrk (`make bench-deps`) and py-spy (`pip install py-spy`)")
    upstream_port, gateway_port = free_port(), free_port()
    cores = os.cpu_count() or 1
    load_cpu, target_cpu = (0, 1) if cores >= 2 else (None, None)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        out = args.out or work
        out.mkdir(parents=True, exist_ok=True)
        script = work / "chat.lua"
        script.write_text(WRK_SCRIPT % {"body": json.dumps(CHAT), "key": LIMITED_KEY})
        config = work / "gateway.yaml"
        config.write_text(production_config(gateway_port, upstream_port))

        def start(port: int, command: list[str], cpu: int | None) -> int:
            process = subprocess.Popen(
                pinned(command, cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            stack.callback(process.wait)
            stack.callback(process.terminate)
            wait_listening(port, process)
            return process.pid  # taskset execs: the same process

        python = sys.executable
        start(upstream_port, [python, "-m", "ops.bench.upstream", "--port", str(upstream_port)],
              load_cpu)  # fmt: skip
        gateway_pid = start(
            gateway_port, [python, "-m", "gateway", "serve", "--config", str(config)], target_cpu
        )
        wrk(gateway_port, 10, 2, script, load_cpu)  # warm-up: connections, lazy imports
        collapsed = out / "gateway.collapsed"
        sampler = subprocess.Popen(
            [
                py_spy, "record", "--pid", str(gateway_pid), "--rate", str(args.rate),
                "--duration", str(args.duration), "--format", "raw", "--output", str(collapsed),
                *(["--nonblocking"] if args.nonblocking else []),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        load = wrk(gateway_port, args.concurrency, args.duration, script, load_cpu, gateway_pid)
        sampler.wait(timeout=args.duration + 30)
        print(
            f"c={args.concurrency}: {load.rps:,.0f} req/s, CPU {load.cpu_us:.0f} µs a request, "
            f"{load.errors} errors; stacks in {collapsed}\n"
        )
        print(summarise(collapsed, args.top))


if __name__ == "__main__":
    main()
