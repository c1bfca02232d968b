"""BackendActor: one per replica of a model service.

It owns the replica's connection pool (actors.backend.pool) and decides admission: a request
task asks for a `Lease`, does its network I/O itself on the leased pool (never inside this
actor), then
`notify`s a `Release` with the outcome. The actor keeps the in-flight count exact (a lease is
released once; releases of leases it never granted, such as those of an instance that crashed
before a restart, are ignored) and learns latency and error statistics from the outcomes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import structlog

from actors.backend.breaker import BreakerSettings, BreakerState, CircuitBreaker
from actors.backend.kinds import BackendProfile
from actors.backend.pool import PoolSettings, UpstreamPool
from actors.backend.probe import ProbeResult, ProbeTarget, probe_loop
from actors.backend.settings import BackendSettings, BackendTimeouts
from actors.kernel import ActorRef, Ask, SyncActor, settle_reply
from actors.kernel.frozen import quick_init
from actors.router.balancer import ReplicaLoad


class Outcome(StrEnum):
    """How a leased request ended, from the replica's point of view."""

    OK = "ok"  # a complete answer
    REJECTED = "rejected"  # the replica answered; the request was at fault (upstream 4xx)
    # A failure that may be the request's own (a 500, an empty stream): not counted until
    # a second replica has tried the request (`Judge`).
    SUSPECT = "suspect"
    UPSTREAM_ERROR = "upstream_error"  # 5xx, malformed answer, error inside a stream
    CONNECT_ERROR = "connect_error"  # refused, unreachable, DNS: the request never left
    CONNECTION_LOST = "connection_lost"  # dropped before any answer: the replica went away
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # the client went away; says nothing about the replica
    # A relayed stream ended with neither text nor a finish reason (llama-cpp-python's
    # interrupt_requests): counted in a metric, not held against the replica, which was
    # misconfigured or asked to stop, not broken.
    INCOMPLETE = "incomplete"


@quick_init
@dataclass(frozen=True, slots=True)
class Lease:
    """Permission to send one request to this replica, with what the request task needs."""

    lease_id: int
    backend: str
    base_url: str
    upstream_model: str
    pool: UpstreamPool
    timeouts: BackendTimeouts
    unary_timeout: float  # seconds for the whole answer: first_byte (a unary one comes at once)
    stream_timeout: float  # seconds for the whole stream: its idle gaps are watched per stream
    headers: dict[str, str]
    ref: ActorRef
    profile: BackendProfile


@quick_init
@dataclass(frozen=True, slots=True)
class AcquireLease(Ask["Lease | None"]):
    """Ask: a Lease, or None when the replica refuses (full, circuit open, unhealthy). In
    panic (too few healthy replicas for the model) health is not a reason to refuse."""

    panic: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class Release:
    """Notify: a leased request ended. Times are seconds; ttft is None for non-streams."""

    lease_id: int
    outcome: Outcome
    latency: float
    ttft: float | None = None


@dataclass(frozen=True, slots=True)
class AwaitDrained(Ask[None]):
    """Ask: answered once no lease of this replica is in flight (at once if none is): a
    deferred reply, so a reload can stop a retired replica without polling its load."""


@dataclass(frozen=True, slots=True)
class Judge:
    """Notify: the verdict on a try released as SUSPECT, once a second replica has tried the
    request: `failed` if the replica was at fault (the other one answered, or failed
    differently), not if the request was (the other one failed the same way)."""

    lease_id: int
    failed: bool


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Ask GetStats: a consistent view for /admin/backends and tests."""

    name: str
    url: str
    in_flight: int
    served: int
    failures: int
    latency_s: float  # the peak-EWMA estimate the balancer uses
    circuit: BreakerState
    healthy: bool
    queued: float  # the replica's own queue, as its metrics last said
    # Releases of leases this instance did not hold: granted before a restart, or a defect
    # (a lease released twice). Counted so that the second kind cannot hide.
    stray_releases: int = 0


@dataclass(frozen=True, slots=True)
class GetStats:
    pass


# Outcomes that count against a replica (the circuit breaker's failures).
FAILURES = frozenset(
    {Outcome.UPSTREAM_ERROR, Outcome.CONNECT_ERROR, Outcome.CONNECTION_LOST, Outcome.TIMEOUT}
)
# A SUSPECT try whose verdict never came (the request ended first) is forgotten after this.
SUSPECT_TTL = 300.0
log = structlog.get_logger("actors.backend.actor")


class BackendActor(SyncActor):
    def __init__(
        self,
        name: str,
        public_model: str,
        settings: BackendSettings,
        *,
        load: ReplicaLoad,
        breaker: BreakerSettings,
        default_latency: float,
    ) -> None:
        self._name = name
        self._public_model = public_model
        self._settings = settings
        self._load = load
        self._breaker_settings = breaker
        self._breaker = CircuitBreaker(breaker)
        self._default_latency = default_latency
        self._pool: UpstreamPool | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._leases: dict[int, float] = {}  # lease id -> monotonic start
        self._drained: list[asyncio.Future[None]] = []  # AwaitDrained, until no lease is left
        self._suspects: dict[int, float] = {}  # SUSPECT lease id -> monotonic release time
        self._profile = settings.profile
        self._ids = itertools.count(1)
        self._served = 0
        self._failures = 0
        self._stray_releases = 0
        self._passes = 0  # probe results in a row, for the health thresholds
        self._fails = 0
        self._headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        timeouts = settings.timeouts
        # A non-streaming answer arrives all at once when generation ends: "first byte" and
        # "whole answer" are the same deadline. One timer per request, never one per read:
        # a stream's idle gaps are watched by its request task
        # (gateway.upstream.watchdog.IdleWatchdog) at a fraction of a timer per chunk.
        self._unary_timeout = min(timeouts.first_byte, timeouts.total)
        self._stream_timeout = timeouts.total

    async def on_start(self) -> None:
        self._load.reset(self._default_latency)
        timeouts = self._settings.timeouts
        pool = self._settings.pool
        self._pool = UpstreamPool(
            self._settings.url,
            PoolSettings(
                max_connections=pool.max_connections,
                keepalive=pool.keepalive,
                connect_timeout=timeouts.connect,
            ),
        )

        health = self._settings.health
        if health.enabled:
            profile, url = self._profile, self._settings.url
            target = ProbeTarget(
                health_url=url + profile.health_path,
                metrics_url=url + profile.metrics_path if profile.metrics_path else None,
                queue=profile.queue_pattern(),
                waiting_metric=profile.waiting_metric,
            )
            # The probes' own session: aiohttp, off the hot path. Every probe shares it, so
            # it keeps no cookies (an upstream's, or its load balancer's).
            self._probe_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self.context.spawn_task(
                probe_loop(
                    self._probe_session,
                    target,
                    health,
                    self.context.self_ref.notify,
                    random.Random(),
                ),
                name="health-probe",
            )

    async def on_stop(self) -> None:
        await self._close()

    async def on_failure(self, error: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._probe_session is not None:
            await self._probe_session.close()
            self._probe_session = None

    def handle(self, message: Any) -> Any:
        match message:
            case AcquireLease(panic=panic):
                return self._acquire(panic)
            case Release():
                self._release(message)
            case Judge(lease_id=lease_id, failed=failed):
                if self._suspects.pop(lease_id, None) is not None:
                    self._record(failed=failed, sample=None)
            case GetStats():
                return self._stats()
            case AwaitDrained():
                if not self._leases:
                    return None
                waiter = asyncio.get_running_loop().create_future()
                self._drained.append(waiter)
                return waiter
            case ProbeResult():
                self._probed(message)
            case _:
                return super().handle(message)
        return None

    def _acquire(self, panic: bool) -> Lease | None:
        pool = self._pool
        if pool is None or len(self._leases) >= self._profile.max_in_flight:
            return None
        now = time.monotonic()
        if not (self._load.healthy or panic) or not self._breaker.allow(now):
            return None
        lease_id = next(self._ids)
        self._leases[lease_id] = now
        self._load.in_flight = len(self._leases)
        return Lease(
            lease_id=lease_id,
            backend=self._name,
            base_url=self._settings.url,
            upstream_model=self._settings.model or self._public_model,
            pool=pool,
            timeouts=self._settings.timeouts,
            unary_timeout=self._unary_timeout,
            stream_timeout=self._stream_timeout,
            headers=self._headers,
            ref=self.context.self_ref,
            profile=self._profile,
        )

    def _release(self, release: Release) -> None:
        if self._leases.pop(release.lease_id, None) is None:
            self._stray_releases += 1  # granted by an earlier instance, or released twice
            return
        self._load.in_flight = len(self._leases)
        if not self._leases and self._drained:
            for waiter in self._drained:
                settle_reply(waiter)
            self._drained.clear()
        outcome = release.outcome
        if outcome is Outcome.CANCELLED or outcome is Outcome.INCOMPLETE:
            self._breaker.abandon()  # says nothing about the replica
            return
        if outcome is Outcome.SUSPECT:
            self._breaker.abandon()  # no verdict yet: free a half-open trial meanwhile
            self._suspect(release.lease_id)
            return
        if outcome is Outcome.REJECTED:
            self._record(failed=False, sample=None)  # it answered: alive, but no latency
            return
        sample = release.ttft if release.ttft is not None else release.latency
        self._record(failed=outcome in FAILURES, sample=sample)

    def _suspect(self, lease_id: int) -> None:
        now = time.monotonic()
        if len(self._suspects) > 1024:  # verdicts that never came: forget the old ones
            horizon = now - SUSPECT_TTL
            self._suspects = {k: t for k, t in self._suspects.items() if t >= horizon}
        self._suspects[lease_id] = now

    def _record(self, *, failed: bool, sample: float | None) -> None:
        """Learn one verdict: the breaker's, the counters, and the latency estimate."""
        now = time.monotonic()
        load = self._load
        if failed:
            self._failures += 1
            # A failing replica answers fast; without a penalty the balancer would prefer it.
            # The penalty is the default latency, never compounded: repeated failures must
            # not inflate the estimate (they once drove it to minutes).
            if load.latency < self._default_latency:
                load.observe(self._default_latency, now)
        else:
            self._served += 1
            if sample is not None:
                load.observe(sample, now)
        change = self._breaker.record(failed=failed, now=now)
        if change is not None:
            load.blocked_until = self._breaker.open_until() if failed else 0.0
            log.warning(
                "circuit_" + change.value,
                backend=self._name,
                ejections=self._breaker.ejections,
                open_for_s=round(max(0.0, self._breaker.open_until() - now), 3),
            )

    def _probed(self, result: ProbeResult) -> None:
        health = self._settings.health
        load = self._load
        load.queued = result.waiting or 0.0
        if result.healthy:
            self._passes += 1
            self._fails = 0
            if not load.healthy and self._passes >= health.healthy_threshold:
                load.healthy = True
                log.warning("backend_healthy", backend=self._name)
        else:
            self._fails += 1
            self._passes = 0
            if load.healthy and self._fails >= health.unhealthy_threshold:
                load.healthy = False
                log.warning(
                    "backend_unhealthy",
                    backend=self._name,
                    failed_probes=self._fails,
                    probe=self._profile.health_path,
                    failure=result.failure,
                )

    def _stats(self) -> BackendStats:
        return BackendStats(
            name=self._name,
            url=self._settings.url,
            in_flight=len(self._leases),
            served=self._served,
            failures=self._failures,
            latency_s=self._load.latency,
            circuit=self._breaker.current(time.monotonic()),
            healthy=self._load.healthy,
            queued=self._load.queued,
            stray_releases=self._stray_releases,
        )

    def introspect(self) -> dict[str, Any]:
        stats = self._stats()
        return {
            "url": stats.url,
            "in_flight": stats.in_flight,
            "kind": self._profile.kind,
            "max_in_flight": self._profile.max_in_flight,
            "served": stats.served,
            "failures": stats.failures,
            "latency_s": round(stats.latency_s, 6),
            "circuit": stats.circuit.value,
            "healthy": stats.healthy,
            "queued": stats.queued,
            "stray_releases": stats.stray_releases,
            "connections": self._pool.open_connections if self._pool is not None else 0,
            "idle_connections": self._pool.idle_connections if self._pool is not None else 0,
        }
