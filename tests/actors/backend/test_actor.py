"""BackendActor on its own: leases granted and released once, drains told, not polled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from actors.backend.actor import (
    AcquireLease,
    AwaitDrained,
    BackendActor,
    BackendStats,
    GetStats,
    Lease,
    Outcome,
    Release,
)
from actors.backend.breaker import BreakerSettings
from actors.backend.probe import HealthSettings
from actors.backend.settings import BackendSettings
from actors.kernel import ActorRef, ActorSystem, AskTimeout, ChildSpec, ask_settled
from actors.router.balancer import ReplicaLoad

# No probe: nothing here talks to a network; the replica's URL is never dialled.
SETTINGS = BackendSettings(
    url="http://127.0.0.1:9", max_in_flight=2, health=HealthSettings(enabled=False)
)


@pytest.fixture
async def replica() -> AsyncIterator[tuple[ActorRef, ReplicaLoad]]:
    system = ActorSystem()
    load = ReplicaLoad("m#0", max_in_flight=2)
    actor = BackendActor(
        "m#0", "m", SETTINGS, load=load, breaker=BreakerSettings(), default_latency=1.0
    )
    ref = await system.spawn(ChildSpec("m#0", lambda: actor))
    yield ref, load
    await system.shutdown()


async def lease_of(ref: ActorRef) -> Lease:
    lease = await ref.ask(AcquireLease())
    assert isinstance(lease, Lease)
    return lease


async def stats(ref: ActorRef) -> BackendStats:
    result: BackendStats = await ref.ask(GetStats())
    return result


async def test_a_lease_released_twice_frees_one_place_and_is_counted_stray(
    replica: tuple[ActorRef, ReplicaLoad],
) -> None:
    ref, load = replica
    first, _ = await lease_of(ref), await lease_of(ref)
    assert await ref.ask(AcquireLease()) is None  # max_in_flight 2: full
    ref.notify(Release(first.lease_id, Outcome.OK, 0.01))
    ref.notify(Release(first.lease_id, Outcome.OK, 0.01))
    after = await stats(ref)
    assert (after.in_flight, load.in_flight, after.stray_releases) == (1, 1, 1)
    assert after.served == 1  # the second release taught it nothing


async def test_drained_is_answered_when_the_last_lease_is_released(
    replica: tuple[ActorRef, ReplicaLoad],
) -> None:
    ref, _ = replica
    await ask_settled(ref, AwaitDrained(), timeout=1.0)  # idle: answered at once
    first, second = await lease_of(ref), await lease_of(ref)
    drained = asyncio.ensure_future(ask_settled(ref, AwaitDrained(), timeout=5.0))
    ref.notify(Release(first.lease_id, Outcome.OK, 0.01))
    await asyncio.sleep(0)  # a loop pass: one lease is still out
    assert not drained.done()
    ref.notify(Release(second.lease_id, Outcome.CANCELLED, 0.01))
    async with asyncio.timeout(5):
        await drained


async def test_a_drain_not_reached_in_time_is_an_ask_timeout(
    replica: tuple[ActorRef, ReplicaLoad],
) -> None:
    ref, _ = replica
    await lease_of(ref)
    with pytest.raises(AskTimeout):
        await ask_settled(ref, AwaitDrained(), timeout=0.05)
