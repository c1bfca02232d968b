"""Micro-benchmark of the actor kernel: ask round trip, tell throughput, and the pykka bridge.

    python -m ops.bench.actors [--messages N] [--loop uvloop|asyncio]

Not a test: it prints numbers for docs/benchmarks.md. Each figure is the median of several
rounds, after a warm-up round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pykka
import uvloop

from actors.kernel import (
    Actor,
    ActorSystem,
    BridgedThreadingActor,
    ChildSpec,
    MailboxConfig,
    SyncActor,
    ask_bridged,
    await_pykka,
)

ROUNDS = 5


class Echo(Actor):
    def __init__(self) -> None:
        self.received = 0
        self.done: asyncio.Future[None] | None = None
        self.expected = 0

    async def receive(self, message: Any) -> Any:
        self.received += 1
        if self.done is not None and self.received >= self.expected:
            self.done.set_result(None)
            self.done = None
        return message


class SyncEcho(SyncActor):
    def handle(self, message: Any) -> Any:
        return message


class PykkaEcho(BridgedThreadingActor):
    def handle(self, message: Any) -> Any:
        return message


class PlainPykkaEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


async def per_op_us(op: Callable[[], Awaitable[Any]], count: int) -> float:
    """Median over rounds of the mean cost of one awaited op, in microseconds."""
    for _ in range(min(count, 1000)):
        await op()
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            await op()
        rounds.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(rounds)


async def ask_latency_percentiles(ref: Any, count: int) -> tuple[float, float]:
    samples = []
    for i in range(count):
        start = time.perf_counter_ns()
        await ref.ask(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


async def tell_throughput(system: ActorSystem, count: int) -> float:
    """Messages per second through tell_nowait, measured until the actor has handled all."""
    echo = Echo()
    ref = await system.spawn(
        ChildSpec("sink", lambda: echo, mailbox=MailboxConfig(capacity=count + 1))
    )
    rates = []
    for _ in range(ROUNDS):
        echo.received = 0
        echo.expected = count
        echo.done = asyncio.get_running_loop().create_future()
        done = echo.done
        start = time.perf_counter()
        for i in range(count):
            ref.tell_nowait(i)
        await done
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


async def run(messages: int) -> dict[str, float]:
    system = ActorSystem()
    echo = await system.spawn(ChildSpec("echo", Echo))
    results: dict[str, float] = {}
    results["asyncio ask round trip, mean (us)"] = await per_op_us(lambda: echo.ask(1), messages)
    p50, p99 = await ask_latency_percentiles(echo, messages)
    results["asyncio ask round trip, p50 (us)"] = p50
    results["asyncio ask round trip, p99 (us)"] = p99
    results["asyncio tell throughput (msg/s)"] = await tell_throughput(system, messages)
    sync_echo = await system.spawn(ChildSpec("sync-echo", SyncEcho))
    results["SyncActor ask, served directly (us)"] = await per_op_us(
        lambda: sync_echo.ask(1), messages
    )

    bridged = PykkaEcho.start()
    plain = PlainPykkaEcho.start()
    try:
        bridge_count = max(1000, messages // 10)
        results["pykka ask_bridged round trip (us)"] = await per_op_us(
            lambda: ask_bridged(bridged, 1, timeout=5), bridge_count
        )
        results["pykka future via executor (us)"] = await per_op_us(
            lambda: await_pykka(plain.ask(1, block=False), timeout=5), bridge_count
        )
    finally:
        bridged.stop()
        plain.stop()
    await system.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    runner = uvloop.run if args.loop == "uvloop" else asyncio.run
    results = runner(run(args.messages))
    print(f"actor kernel micro-benchmark ({args.loop}, {args.messages} messages)")
    for name, value in results.items():
        print(f"  {name:<40} {value:>12,.1f}")


if __name__ == "__main__":
    main()
