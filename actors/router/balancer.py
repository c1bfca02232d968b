"""Choosing a replica: live load gauges and the balancing policies that rank replicas by them.

Each replica has one `ReplicaLoad`, written only by its BackendActor and read by the
RouterActor to order candidates. It lives as long as the replica's place in the tree (it is
handed to every instance of the BackendActor), so the router's reference never goes stale
across restarts. Reading it is exact: everything runs on one event loop thread.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class Policy(StrEnum):
    P2C_PEAK_EWMA = "p2c_peak_ewma"  # power of two choices over latency x (in-flight + 1)
    LEAST_IN_FLIGHT = "least_in_flight"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"


class BalancerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = Policy.P2C_PEAK_EWMA
    default_latency: float = Field(
        1.0, gt=0, description="seconds assumed for a replica with no samples yet"
    )
    decay: float = Field(10.0, gt=0, description="seconds for a latency peak to fade (1/e)")


class LoadView(Protocol):
    """A replica's load as the router reads it: read-only. Only the replica's BackendActor
    holds the `ReplicaLoad` itself and writes it; everyone else is handed this view, so the
    type checker refuses a write from anywhere else."""

    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def max_in_flight(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def blocked_until(self) -> float: ...
    @property
    def queued(self) -> float: ...
    @property
    def latency(self) -> float: ...
    @property
    def sampled(self) -> bool: ...
    def cost(self, cold_latency: float | None = None) -> float: ...
    def has_room(self, now: float) -> bool: ...


class ReplicaLoad:
    """What the router may know of a replica without asking it (through a `LoadView`)."""

    __slots__ = (
        "_latency",
        "_stamp",
        "blocked_until",
        "decay",
        "healthy",
        "in_flight",
        "max_in_flight",
        "name",
        "queued",
        "sampled",
        "weight",
    )

    def __init__(
        self,
        name: str,
        *,
        weight: int = 1,
        max_in_flight: int = 512,
        default_latency: float = 1.0,
        decay: float = 10.0,
    ) -> None:
        self.name = name
        self.weight = weight
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.healthy = True  # the health probe's verdict
        self.blocked_until = 0.0  # monotonic time the circuit stays open until
        self.queued = 0.0  # requests waiting in the replica's own queue, if its probe knows
        self.decay = decay
        self._latency = default_latency
        self._stamp = 0.0
        self.sampled = False  # whether _latency comes from a real request yet

    @property
    def latency(self) -> float:
        return self._latency

    def observe(self, sample: float, now: float) -> None:
        """Peak EWMA (as in Finagle): a slower sample takes effect at once; faster samples pull
        the estimate down gradually, so a replica that was slow is trusted again slowly."""
        if not self.sampled or sample >= self._latency:
            self._latency = sample
            self.sampled = True
        else:
            weight = math.exp(-max(0.0, now - self._stamp) / self.decay)
            self._latency = self._latency * weight + sample * (1 - weight)
        self._stamp = now

    def reset(self, default_latency: float) -> None:
        self.in_flight = 0
        self.healthy = True
        self.blocked_until = 0.0
        self.queued = 0.0
        self._latency = default_latency
        self.sampled = False

    def cost(self, cold_latency: float | None = None) -> float:
        """Latency times the work ahead of a new request. A replica with no sample yet is
        priced at `cold_latency` (its warm peers' mean), so that a new replica neither waits
        forever behind faster-measured peers nor takes every request until it is measured."""
        latency = self._latency if self.sampled or cold_latency is None else cold_latency
        return latency * (self.in_flight + self.queued + 1)

    def has_room(self, now: float) -> bool:
        return self.healthy and now >= self.blocked_until and self.in_flight < self.max_in_flight


class Balancer:
    """Orders a model's replicas for one request: the chosen one first, then the others in
    the order to fall back to them."""

    def __init__(self, policy: Policy, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.Random()
        self._wrr_current: dict[str, float] = {}

    def order(self, replicas: Sequence[LoadView], *, now: float, panic: bool) -> list[int]:
        """Indices into `replicas`. Replicas without room (unhealthy, circuit open, full) go
        last, unless in panic (too few healthy: then spread over all rather than refuse)."""
        indices = list(range(len(replicas)))
        if len(indices) <= 1:
            return indices
        usable = indices if panic else [i for i in indices if replicas[i].has_room(now)]
        warm = [r.latency for r in replicas if r.sampled]
        cold = sum(warm) / len(warm) if warm else None

        def cost(i: int) -> float:
            return replicas[i].cost(cold)

        rest = [i for i in indices if i not in usable]
        rest.sort(key=cost)
        if not usable:
            return rest
        if self._policy is Policy.P2C_PEAK_EWMA:
            chosen = self._p2c(usable, cost)
        elif self._policy is Policy.LEAST_IN_FLIGHT:
            least = min(replicas[i].in_flight for i in usable)
            chosen = self._rng.choice([i for i in usable if replicas[i].in_flight == least])
        else:
            chosen = self._weighted_round_robin(replicas, usable)
        others = sorted((i for i in usable if i != chosen), key=cost)
        return [chosen, *others, *rest]

    def _p2c(self, usable: list[int], cost: Callable[[int], float]) -> int:
        if len(usable) == 1:
            return usable[0]
        first, second = self._rng.sample(usable, 2)
        return first if cost(first) <= cost(second) else second

    def _weighted_round_robin(self, replicas: Sequence[LoadView], usable: list[int]) -> int:
        """Smooth weighted round robin (as in nginx): even spread, exact proportions."""
        current = self._wrr_current
        total = 0
        best = usable[0]
        for i in usable:
            replica = replicas[i]
            total += replica.weight
            current[replica.name] = current.get(replica.name, 0.0) + replica.weight
            if current[replica.name] > current[replicas[best].name]:
                best = i
        current[replicas[best].name] -= total
        return best


_MASK = (1 << 64) - 1


def splitmix64(value: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK
    return value ^ (value >> 31)


def name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def affinity_pick(
    replicas: Sequence[LoadView],
    names: Sequence[int],
    key: int,
    *,
    now: float,
    load_factor: float,
    min_in_flight: int,
) -> int | None:
    """Rendezvous (highest random weight) hashing with bounded load.

    The same key lands on the same replica while the set of replicas stays the same, and
    moves as little as possible when it changes. A replica is passed over if it has no room
    or already carries more than `load_factor` times its fair share of the requests in
    flight (consistent hashing with bounded loads), so a hot prefix cannot swamp one replica.
    Below `min_in_flight` a replica keeps its affinity whatever the others carry: at low
    traffic a warm cache is worth more than an even spread.
    """
    total = sum(r.in_flight for r in replicas) + 1
    bound = max(float(min_in_flight), load_factor * total / len(replicas))
    ranked = sorted(range(len(replicas)), key=lambda i: splitmix64(key ^ names[i]), reverse=True)
    for index in ranked:
        replica = replicas[index]
        if replica.has_room(now) and replica.in_flight + 1 <= bound:
            return index
    return None
