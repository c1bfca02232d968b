"""What rate limiting costs per request: the same gateway and upstream with a key without
limits, a key with limits kept in the process, and a key with limits kept in Redis.

    python -m ops.bench.limits [--duration 5] [--rounds 3] [--redis redis://127.0.0.1:6379/0]

Three gateways (one per configuration) run side by side; wrk measures each in turn, in
interleaved rounds, at concurrency 1 (latency) and 100 (throughput); medians are reported.
The limits are set far above the load, so every request is admitted and charged. As in
ops.bench.run, on two or more cores the gateways are pinned to one core and the upstream and
wrk to another (Redis, a service of the machine, is not pinned).
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
from contextlib import ExitStack
from pathlib import Path

import yaml

from actors.auth.keys import hash_secret
from ops.bench.rounds import measure, print_medians
from ops.bench.run import CHAT, WRK_SCRIPT, free_port, pinned, wait_listening

SECRET = "b" * 43
LIMITS: dict[str, object] = {
    "rpm": 100_000_000,
    "tpm": 1_000_000_000_000,
    "max_concurrent": 100_000,
}


def config(
    port: int, upstream: int, key_id: str, limits: dict[str, object] | None, redis: str | None
) -> str:
    key: dict[str, object] = {"id": key_id, "secret_sha256": hash_secret(SECRET)}
    if limits:
        key["scopes"] = limits
    return yaml.safe_dump(
        {
            "listen": f"127.0.0.1:{port}",
            "auth": {"keys": [key]},
            "limits": {"redis_url": redis} if redis else {},
            "logging": {"format": "json", "access_log": False},
            "models": [
                {
                    "name": "bench-model",
                    "backends": [
                        {"url": f"http://127.0.0.1:{upstream}", "model": "bench/upstream-model"}
                    ],
                }
            ],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    key_id = secrets.token_hex(6)
    key = f"sk-citadel-{key_id}-{SECRET}"
    upstream = free_port()
    targets = {
        "no limits": (free_port(), None, None),
        "limits in the process": (free_port(), LIMITS, None),
        "limits in Redis": (free_port(), LIMITS, args.redis),
    }
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        script = work / "chat.lua"
        script.write_text(WRK_SCRIPT % {"body": json.dumps(CHAT), "key": key})
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        load_cpu, target_cpu = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)
        upstream_command = [sys.executable, "-m", "ops.bench.upstream", "--port", str(upstream)]
        commands = [(pinned(upstream_command, load_cpu), upstream)]
        for index, (port, limits, redis) in enumerate(targets.values()):
            path = work / f"gateway-{index}.yaml"
            path.write_text(config(port, upstream, key_id, limits, redis))
            serve = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
            commands.append((pinned(serve, target_cpu), port))
        for command, port in commands:
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            stack.callback(process.wait)
            stack.callback(process.terminate)
            wait_listening(port, process)
        wrk_targets = {name: (port, script) for name, (port, _, _) in targets.items()}
        results = measure(wrk_targets, args.rounds, args.duration, load_cpu)
    print(f"{args.rounds} rounds of {args.duration}s; medians")
    print_medians(results, "key")


if __name__ == "__main__":
    main()
