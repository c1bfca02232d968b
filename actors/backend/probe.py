"""Active health probes: a child task of each BackendActor that asks its replica, now and
then, whether it is well, and tells the actor what it found.

The network I/O happens here, in the child task, never in the actor's handler; the verdict
arrives as a `ProbeResult` notice. Where the replica exposes Prometheus metrics with queue
gauges (vLLM, llama-server, TGI, SGLang: see actors.backend.kinds), the probe also reads its
queue (requests running and waiting), which the balancer adds to the replica's cost.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from pydantic import BaseModel, ConfigDict, Field


class HealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    path: str | None = Field(
        None, description="GET this; any 2xx is healthy (default: the backend kind's)"
    )
    interval: float = Field(5.0, gt=0, description="seconds between probes")
    jitter: float = Field(0.2, ge=0, lt=1, description="share of the interval to vary by")
    timeout: float = Field(2.0, gt=0)
    healthy_threshold: int = Field(2, ge=1, description="passes in a row to become healthy")
    unhealthy_threshold: int = Field(2, ge=1, description="failures in a row to be ejected")
    metrics_path: str | None = Field(
        None,
        description='Prometheus metrics to read the queue from, e.g. "/metrics" (default: the '
        "backend kind's)",
    )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Notice from the probe task: did the replica answer well, and its queue if known."""

    healthy: bool
    waiting: float | None = None
    running: float | None = None
    failure: str | None = None  # what failed, for the log ("HTTP 404", "timeout", ...)


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where and how to probe one replica (from its settings and its kind's profile)."""

    health_url: str
    metrics_url: str | None
    queue: re.Pattern[bytes] | None  # the queue gauges' lines (BackendProfile.queue_pattern)
    waiting_metric: str | None


def parse_queue(
    text: bytes, pattern: re.Pattern[bytes], waiting_metric: str | None
) -> tuple[float | None, float | None]:
    """(waiting, running) from the server's metrics, summed over models; None where absent."""
    waiting_name = waiting_metric.encode() if waiting_metric else None
    found: dict[bool, float] = {}
    for name, value in pattern.findall(text):
        is_waiting = name == waiting_name
        found[is_waiting] = found.get(is_waiting, 0.0) + float(value)
    return found.get(True), found.get(False)


async def probe_loop(
    session: aiohttp.ClientSession,
    target: ProbeTarget,
    settings: HealthSettings,
    report: Callable[[ProbeResult], None],
    rng: random.Random,
) -> None:
    """Probe forever (until cancelled with the actor). Never raises for a bad replica: a
    failure is a result, not a crash; what it was goes in the result for the log."""
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    while True:
        spread = settings.interval * settings.jitter
        await asyncio.sleep(settings.interval + rng.uniform(-spread, spread))
        healthy = False
        waiting = running = None
        failure: str | None = None
        try:
            async with session.get(target.health_url, timeout=timeout) as response:
                healthy = 200 <= response.status < 300
                await response.read()
                if not healthy:
                    failure = f"HTTP {response.status}"
            if healthy and target.metrics_url and target.queue is not None:
                async with session.get(target.metrics_url, timeout=timeout) as metrics:
                    if metrics.status == 200:
                        text = await metrics.read()
                        waiting, running = parse_queue(text, target.queue, target.waiting_metric)
        except TimeoutError:
            healthy, failure = False, "timeout"
        except aiohttp.ClientError as exc:
            healthy, failure = False, type(exc).__name__
        report(ProbeResult(healthy, waiting, running, failure))
