"""RouterActor on its own: the in-flight and retry counts that bound retries, each ended once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.backend.probe import HealthSettings
from actors.backend.settings import BackendSettings
from actors.kernel import Actor, ActorRef, ActorSystem, ChildSpec, SyncActor
from actors.router.actor import (
    AllowRetry,
    ModelSettings,
    RequestEnded,
    RetryBudgetSettings,
    RetryEnded,
    Route,
    RouteDecision,
    RouterActor,
    RouterSettings,
    RoutingSettings,
)
from actors.router.balancer import ReplicaLoad

BACKEND = BackendSettings(url="http://127.0.0.1:9", health=HealthSettings(enabled=False))
BUDGET = RetryBudgetSettings(ratio=0.0, min_retries=1)


class Replica(SyncActor):
    """Stands in for a BackendActor: the router only orders refs, it never asks them."""

    def handle(self, message: Any) -> Any:
        return super().handle(message)


@pytest.fixture
async def router() -> AsyncIterator[ActorRef]:
    system = ActorSystem()
    replica = await system.spawn(ChildSpec("m#0", lambda: Replica()))
    model = ModelSettings(
        name="m", backends=(BACKEND,), routing=RoutingSettings(retry_budget=BUDGET)
    )

    def make() -> Actor:
        loads = {"m#0": ReplicaLoad("m#0")}
        return RouterActor(RouterSettings(models=(model,)), lambda _: replica, loads)

    yield await system.spawn(ChildSpec("router", make))
    await system.shutdown()


def counts(router: ActorRef) -> tuple[int, int, int]:
    details = router.snapshot().details
    model = details["models"]["m"]
    return model["in_flight"], model["retrying"], details["unmatched_ends"]


async def test_a_route_counts_in_flight_until_its_one_end(router: ActorRef) -> None:
    decision = await router.ask(Route("m"))
    assert isinstance(decision, RouteDecision)
    assert counts(router) == (1, 0, 0)
    router.notify(RequestEnded("m"))
    assert counts(router) == (0, 0, 0)
    router.notify(RequestEnded("m"))  # ended twice: the count stays, the defect shows
    assert counts(router) == (0, 0, 1)


async def test_retries_are_granted_within_the_budget_and_each_ended_once(
    router: ActorRef,
) -> None:
    await router.ask(Route("m"))
    assert await router.ask(AllowRetry("m")) is True
    assert await router.ask(AllowRetry("m")) is False  # min_retries 1, ratio 0: one at a time
    router.notify(RetryEnded("m"))
    assert counts(router) == (1, 0, 0)
    assert await router.ask(AllowRetry("m")) is True  # the grant came back
    router.notify(RetryEnded("m"))
    router.notify(RetryEnded("m"))
    assert counts(router) == (1, 0, 1)
