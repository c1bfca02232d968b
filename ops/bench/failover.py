"""Failover under load: one of two replicas dies in the middle of a run.

    python -m ops.bench.failover [--duration 10] [--connections 50]

Two fixed-answer upstreams serve one model behind the gateway. wrk drives non-streaming chat
completions for `--duration` seconds; halfway through, one upstream is killed (SIGKILL, as a
crashed process). The same run without the kill gives the baseline. Reported: requests, the
share that failed (any non-200 or socket error; target zero), and latency p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

from ops.bench.run import API_KEY, CHAT, WRK_SCRIPT, free_port, pinned, wait_listening

CONFIG = """
listen: "127.0.0.1:%(port)d"
auth:
  api_keys: ["%(key)s"]
logging:
  level: warning
models:
  - name: bench-model
    backends:
      - url: http://127.0.0.1:%(first)d
        model: bench/upstream-model
      - url: http://127.0.0.1:%(second)d
        model: bench/upstream-model
"""


def run_once(kill: bool, args: argparse.Namespace, work: Path) -> dict[str, float]:
    ports = {"first": free_port(), "second": free_port(), "gateway": free_port()}
    config = work / f"failover-{kill}.yaml"
    config.write_text(CONFIG % {**ports, "port": ports["gateway"], "key": API_KEY})
    cores = os.cpu_count() or 1
    load_cpu, target_cpu = (0, 1) if cores >= 2 else (None, None)
    python = sys.executable
    with ExitStack() as stack:
        processes = {}
        for name in ("first", "second"):
            processes[name] = subprocess.Popen(
                pinned([python, "-m", "ops.bench.upstream", "--port", str(ports[name])], load_cpu),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(processes[name].wait)
            stack.callback(processes[name].kill)
            wait_listening(ports[name], processes[name])
        gateway = subprocess.Popen(
            pinned([python, "-m", "gateway", "serve", "--config", str(config)], target_cpu),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(gateway.wait)
        stack.callback(gateway.terminate)
        wait_listening(ports["gateway"], gateway)
        if kill:
            timer = threading.Timer(
                args.duration / 2, processes["first"].send_signal, [signal.SIGKILL]
            )
            timer.start()
            stack.callback(timer.cancel)
        script = work / "chat.lua"
        command = [
            "wrk", "-t1", f"-c{args.connections}", f"-d{round(args.duration)}s",
            "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{ports['gateway']}/v1/chat/completions",
        ]  # fmt: skip
        output = subprocess.run(
            pinned(command, load_cpu), check=True, capture_output=True, text=True
        )
    data = json.loads(output.stdout.strip().splitlines()[-1])
    return {
        "requests": data["requests"],
        "failed": data["errors"],
        "p50_ms": data["p50_us"] / 1000,
        "p99_ms": data["p99_us"] / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "chat.lua").write_text(WRK_SCRIPT % {"body": json.dumps(CHAT), "key": API_KEY})
        baseline = run_once(False, args, work)
        failover = run_once(True, args, work)
    print(
        f"\n{args.connections} connections, {args.duration:g} s; the kill is at the halfway mark\n"
    )
    print("| run | requests | failed | failed share | p50 | p99 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result in (("both replicas up", baseline), ("one killed mid-run", failover)):
        share = result["failed"] / max(1, result["requests"])
        print(
            f"| {name} | {result['requests']:,.0f} | {result['failed']:,.0f} | {share:.3%} "
            f"| {result['p50_ms']:.2f} ms | {result['p99_ms']:.2f} ms |"
        )


if __name__ == "__main__":
    main()
