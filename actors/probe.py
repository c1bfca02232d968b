"""Active health probes: a child task of each BackendActor that asks its replica, now and
then, whether it is well, and tells the actor what it found.

The network I/O happens here, in the child task, never in the actor's handler; the verdict
arrives as a `ProbeResult` notice. Where the replica exposes vLLM's Prometheus metrics, the
probe also reads its queue (requests running and waiting), which the balancer adds to the
replica's cost.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

_QUEUE_METRIC = re.compile(
    rb"^vllm:num_requests_(waiting|running)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE
)


class HealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    path: str = Field("/health", description="GET this; any 2xx is healthy")
    interval: float = Field(5.0, gt=0, description="seconds between probes")
    jitter: float = Field(0.2, ge=0, lt=1, description="share of the interval to vary by")
    timeout: float = Field(2.0, gt=0)
    healthy_threshold: int = Field(2, ge=1, description="passes in a row to become healthy")
    unhealthy_threshold: int = Field(2, ge=1, description="failures in a row to be ejected")
    metrics_path: str | None = Field(
        None, description='vLLM-style Prometheus metrics to read the queue from, e.g. "/metrics"'
    )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Notice from the probe task: did the replica answer well, and its queue if known."""

    healthy: bool
    waiting: float | None = None
    running: float | None = None


def parse_queue(text: bytes) -> tuple[float | None, float | None]:
    """(waiting, running) from vLLM's metrics, summed over models; None where absent."""
    found: dict[bytes, float] = {}
    for name, value in _QUEUE_METRIC.findall(text):
        found[name] = found.get(name, 0.0) + float(value)
    return found.get(b"waiting"), found.get(b"running")


async def probe_loop(
    session: aiohttp.ClientSession,
    base_url: str,
    settings: HealthSettings,
    report: Callable[[ProbeResult], None],
    rng: random.Random,
) -> None:
    """Probe forever (until cancelled with the actor). Never raises for a bad replica: a
    failure is a result, not a crash."""
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    while True:
        spread = settings.interval * settings.jitter
        await asyncio.sleep(settings.interval + rng.uniform(-spread, spread))
        healthy = False
        waiting = running = None
        try:
            async with session.get(base_url + settings.path, timeout=timeout) as response:
                healthy = 200 <= response.status < 300
                await response.read()
            if healthy and settings.metrics_path:
                async with session.get(
                    base_url + settings.metrics_path, timeout=timeout
                ) as metrics:
                    if metrics.status == 200:
                        waiting, running = parse_queue(await metrics.read())
        except (TimeoutError, aiohttp.ClientError):
            healthy = False
        report(ProbeResult(healthy, waiting, running))
