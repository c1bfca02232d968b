"""A model's routing state inside RouterActor: its replicas, balancer, retry budget (Envoy's
budget_percent and min_retry_concurrency) and the queue of requests waiting for room."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from actors.kernel import ActorRef
from actors.router.balancer import Balancer, LoadView
from actors.router.settings import ModelSettings, RetryBudgetSettings


class QueueFull(Exception):
    """The model's wait queue is full."""


class RetryBudget:
    """Requests and retries in flight for one model, and the budget they allow."""

    __slots__ = ("_settings", "active", "retrying")

    def __init__(self, settings: RetryBudgetSettings) -> None:
        self._settings = settings
        self.active = 0
        self.retrying = 0

    def try_retry(self) -> bool:
        allowed = max(self._settings.min_retries, self._settings.ratio * self.active)
        if self.retrying >= allowed:
            return False
        self.retrying += 1
        return True


@dataclass(slots=True)
class ModelGroup:
    """One model's routing state: its replicas' refs and loads, its balancer, its retry
    budget, and the requests waiting for room."""

    model: ModelSettings
    refs: tuple[ActorRef, ...]
    loads: tuple[LoadView, ...]
    balancer: Balancer
    budget: RetryBudget
    name_hashes: tuple[int, ...]
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)

    def wait_for_room(self) -> asyncio.Future[None]:
        """A deferred reply: resolved by a later RequestEnded, in arrival order."""
        waiting = self.waiting
        while waiting and waiting[0].done():  # cancelled or timed out: gone
            waiting.popleft()
        if len(waiting) >= self.model.routing.queue_size:
            raise QueueFull(self.model.name)
        waiter = asyncio.get_running_loop().create_future()
        waiting.append(waiter)
        return waiter

    def wake_all(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def wake_one(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
