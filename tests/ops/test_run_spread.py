"""ops.bench.run's round-to-round spread of the c=100 ratios: each round's gateway against
the same round's passthrough, lowest to highest."""

from __future__ import annotations

from ops.bench.run import Load, StreamLoad, spread

STREAM = StreamLoad(ttft_p50_ms=1, ttft_p99_ms=1, stream_p50_ms=1, streams_per_s=1, errors=0)


def measured(cpu_us: float, rps: float) -> tuple[Load, Load, StreamLoad]:
    single = Load(rps=1, p50_ms=1, p99_ms=1, errors=0, cpu_us=1)
    return single, Load(rps=rps, p50_ms=1, p99_ms=1, errors=0, cpu_us=cpu_us), STREAM


def test_each_round_is_paired_with_its_own_passthrough() -> None:
    rounds = {
        "gateway": [measured(300, 3000), measured(280, 3300)],
        "passthrough": [measured(150, 6000), measured(200, 5000)],
    }
    assert spread(rounds) == (
        "- per round at c=100, gateway / passthrough: CPU 1.40x to 2.00x, "
        "throughput 0.50x to 0.66x (2 rounds)"
    )
