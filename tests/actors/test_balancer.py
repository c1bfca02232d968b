"""Balancing policies over live load gauges."""

from __future__ import annotations

import random
from collections import Counter

from actors.balancer import Balancer, Policy, ReplicaLoad, affinity_pick, name_hash


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
