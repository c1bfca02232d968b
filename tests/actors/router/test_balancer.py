"""Balancing policies over live load gauges."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import pytest

from actors.router.balancer import (
    Balancer,
    Policy,
    ReplicaLoad,
    affinity_pick,
    name_hash,
    splitmix64,
)


def replicas(*latencies: float) -> list[ReplicaLoad]:
    loads = []
    for index, latency in enumerate(latencies):
        load = ReplicaLoad(f"r{index}", default_latency=latency)
        loads.append(load)
    return loads


def test_p2c_prefers_the_cheaper_of_two_and_lists_every_replica() -> None:
    loads = replicas(0.1, 1.0)
    balancer = Balancer(Policy.P2C_PEAK_EWMA, random.Random(1))
    for _ in range(20):
        assert balancer.order(loads, now=0, panic=False) == [0, 1]
    loads[0].in_flight = 20  # 0.1 x 21 > 1.0 x 1
    assert balancer.order(loads, now=0, panic=False) == [1, 0]


def test_p2c_spreads_over_equal_replicas() -> None:
    loads = replicas(1.0, 1.0, 1.0, 1.0)
    balancer = Balancer(Policy.P2C_PEAK_EWMA, random.Random(2))
    firsts = Counter(balancer.order(loads, now=0, panic=False)[0] for _ in range(400))
    assert set(firsts) == {0, 1, 2, 3}
    assert min(firsts.values()) > 50


def test_peak_ewma_jumps_up_at_once_and_decays_slowly() -> None:
    load = ReplicaLoad("r", default_latency=0.1, decay=10.0)
    load.observe(2.0, now=1.0)
    assert load.latency == 2.0
    load.observe(0.1, now=2.0)  # one second later: still mostly the peak
    assert 1.5 < load.latency < 2.0
    load.observe(0.1, now=100.0)  # long after: back to the fast samples
    assert load.latency < 0.2


def test_replicas_without_room_go_last_unless_in_panic() -> None:
    loads = replicas(1.0, 1.0, 1.0)
    loads[0].healthy = False
    loads[1].blocked_until = 50.0
    balancer = Balancer(Policy.LEAST_IN_FLIGHT, random.Random(3))
    assert balancer.order(loads, now=10, panic=False)[0] == 2
    assert balancer.order(loads, now=60, panic=False)[0] in (1, 2)  # the ejection is over
    panicked = Counter(balancer.order(loads, now=10, panic=True)[0] for _ in range(100))
    assert set(panicked) == {0, 1, 2}


def test_least_in_flight_picks_the_idlest() -> None:
    loads = replicas(1.0, 1.0, 1.0)
    loads[0].in_flight, loads[1].in_flight, loads[2].in_flight = 5, 1, 3
    balancer = Balancer(Policy.LEAST_IN_FLIGHT, random.Random(4))
    assert balancer.order(loads, now=0, panic=False)[0] == 1


def test_weighted_round_robin_is_exact_and_smooth() -> None:
    loads = replicas(1.0, 1.0, 1.0)
    for load, weight in zip(loads, (5, 1, 1), strict=True):
        load.weight = weight
    balancer = Balancer(Policy.WEIGHTED_ROUND_ROBIN)
    picks = [balancer.order(loads, now=0, panic=False)[0] for _ in range(7)]
    assert Counter(picks) == {0: 5, 1: 1, 2: 1}
    assert picks[:3] != [0, 0, 0]  # smooth: the heavy replica's turns are interleaved


def test_rendezvous_affinity_is_stable_and_moves_only_the_lost_replicas_keys() -> None:
    loads = replicas(1.0, 1.0, 1.0, 1.0)
    hashes = [name_hash(load.name) for load in loads]
    keys = list(range(0, 4000, 7))

    def pick(key: int) -> int | None:
        return affinity_pick(loads, hashes, key, now=0, load_factor=1.5, min_in_flight=8)

    before = {key: pick(key) for key in keys}
    assert {pick(key) for key in keys} == {0, 1, 2, 3}  # spread over all
    assert before == {key: pick(key) for key in keys}  # stable
    loads[2].healthy = False
    after = {key: pick(key) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved  # the lost replica's keys moved...
    assert all(before[key] == 2 for key in moved)  # ...and only those


def test_a_replica_not_yet_measured_is_priced_at_its_warm_peers_mean() -> None:
    """A replica added next to measured peers gets its share at once (not the cold default
    latency, which would starve it), and is still charged for what it has in flight."""
    warm, cold = ReplicaLoad("warm", default_latency=1.0), ReplicaLoad("new", default_latency=1.0)
    warm.observe(0.01, now=100.0)
    assert warm.sampled
    assert not cold.sampled
    balancer = Balancer(Policy.P2C_PEAK_EWMA, random.Random(3))
    warm.in_flight = 4
    assert balancer.order([warm, cold], now=100.0, panic=False)[0] == 1
    cold.in_flight = 8  # priced at 0.01 x 9 against 0.01 x 5
    assert balancer.order([warm, cold], now=100.0, panic=False)[0] == 0
    cold.observe(0.5, now=100.0)  # once measured, its own estimate counts
    cold.in_flight = 0
    assert balancer.order([warm, cold], now=100.0, panic=False)[0] == 0


def test_a_replica_starts_idle_healthy_and_unmeasured() -> None:
    load = ReplicaLoad("r")
    assert (load.weight, load.max_in_flight, load.latency, load.decay) == (1, 512, 1.0, 10.0)
    assert (load.in_flight, load.queued, load.blocked_until) == (0, 0.0, 0.0)
    assert load.healthy
    assert not load.sampled
    assert load.cost() == 1.0


def test_room_ends_at_max_in_flight_and_during_an_ejection() -> None:
    load = ReplicaLoad("r", max_in_flight=2)
    load.in_flight = 1
    assert load.has_room(now=0)
    load.in_flight = 2
    assert not load.has_room(now=0)
    load.in_flight, load.blocked_until = 0, 10.0
    assert not load.has_room(now=9.9)
    assert load.has_room(now=10.0)


def test_cost_is_latency_times_the_work_ahead() -> None:
    load = ReplicaLoad("r", default_latency=2.0)
    load.in_flight, load.queued = 2, 3.0
    assert load.cost() == 2.0 * 6
    assert load.cost(cold_latency=0.5) == 0.5 * 6  # not measured: its warm peers' mean
    load.observe(4.0, now=0)
    assert load.cost(cold_latency=0.5) == 4.0 * 6  # measured: its own


def test_the_ewma_decays_by_the_time_between_samples() -> None:
    load = ReplicaLoad("r", decay=10.0)
    load.observe(2.0, now=5.0)
    load.observe(0.1, now=5.0)  # no time passed: the peak stands
    assert load.latency == 2.0
    load.observe(0.1, now=15.0)  # one decay later: e^-1 of the peak is left
    assert load.latency == pytest.approx(2.0 * math.exp(-1) + 0.1 * (1 - math.exp(-1)))


def test_reset_forgets_everything_learned() -> None:
    load = ReplicaLoad("r")
    load.observe(3.0, now=1.0)
    load.in_flight, load.healthy, load.blocked_until, load.queued = 4, False, 9.0, 2.0
    load.reset(default_latency=0.5)
    assert (load.in_flight, load.healthy, load.blocked_until, load.queued) == (0, True, 0.0, 0.0)
    assert (load.latency, load.sampled) == (0.5, False)


def test_fallbacks_and_replicas_without_room_are_ordered_by_cost() -> None:
    loads = [ReplicaLoad(f"r{i}") for i in range(3)]
    loads[0].observe(0.4, now=0)
    loads[2].observe(0.2, now=0)  # loads[1] unmeasured: priced at the mean, 0.3
    for load in loads:
        load.healthy = False
    balancer = Balancer(Policy.LEAST_IN_FLIGHT, random.Random(5))
    assert balancer.order(loads, now=0, panic=False) == [2, 1, 0]
    for load in loads:
        load.healthy = True
    loads[0].in_flight = 0
    loads[1].in_flight = loads[2].in_flight = 1  # r0 is the idlest; then by cost
    assert balancer.order(loads, now=0, panic=False) == [0, 2, 1]


def test_p2c_with_one_usable_replica_and_without_a_seed() -> None:
    loads = replicas(1.0, 1.0)
    loads[0].healthy = False
    assert Balancer(Policy.P2C_PEAK_EWMA).order(loads, now=0, panic=False) == [1, 0]
    assert Balancer(Policy.P2C_PEAK_EWMA).order(loads[:1], now=0, panic=False) == [0]
    loads[0].healthy = True
    assert sorted(Balancer(Policy.P2C_PEAK_EWMA).order(loads, now=0, panic=False)) == [0, 1]


def test_weighted_round_robin_takes_equal_turns_in_order_and_keeps_proportions() -> None:
    balancer = Balancer(Policy.WEIGHTED_ROUND_ROBIN)
    loads = replicas(1.0, 1.0, 1.0)
    assert [balancer.order(loads, now=0, panic=False)[0] for _ in range(6)] == [0, 1, 2] * 2
    loads[0].weight = 3
    heavy = Balancer(Policy.WEIGHTED_ROUND_ROBIN)
    picks = Counter(heavy.order(loads, now=0, panic=False)[0] for _ in range(500))
    assert picks == {0: 300, 1: 100, 2: 100}


def test_hashes_are_the_same_on_every_machine() -> None:
    """Affinity must send a conversation to the same replica from every gateway process, so
    the hashes are fixed functions (splitmix64's finaliser, BLAKE2b), never Python's hash()."""
    assert splitmix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF  # splitmix64's first output
    assert splitmix64(0) == 0
    digest = hashlib.blake2b(b"m#0", digest_size=8).digest()
    assert name_hash("m#0") == int.from_bytes(digest, "big")


def test_affinity_prefers_the_highest_weight_and_bounds_its_load() -> None:
    loads = replicas(1.0, 1.0, 1.0)
    hashes = [name_hash(load.name) for load in loads]
    key = 42
    ranked = sorted(range(3), key=lambda i: splitmix64(key ^ hashes[i]), reverse=True)

    def pick() -> int | None:
        return affinity_pick(loads, hashes, key, now=0, load_factor=1.5, min_in_flight=3)

    assert pick() == ranked[0]
    loads[ranked[0]].in_flight = 2  # bound: max(3, 1.5 x 3 / 3): a third request fits
    assert pick() == ranked[0]
    loads[ranked[0]].in_flight = 3  # a fourth would not
    assert pick() == ranked[1]
    # Above min_in_flight the bound is load_factor x its fair share: with the others at 6
    # each and x on the preferred one, max(3, 1.5 x (13 + x) / 3) admits x + 1 up to x = 11.
    loads[ranked[1]].in_flight = loads[ranked[2]].in_flight = 6
    loads[ranked[0]].in_flight = 11
    assert pick() == ranked[0]  # 12 <= 12.0
    loads[ranked[0]].in_flight = 12
    assert pick() == ranked[1]  # 13 > 12.5; the next one's 7 fits
    for load in loads:
        load.healthy = False
    assert pick() is None
