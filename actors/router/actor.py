"""RouterActor: which replicas may serve a request for a given model id or alias.

It answers `Route(model)` with the model's canonical id and its BackendActors in the order
to try them: the balancing policy's choice first, then the fallbacks. It also keeps each
model's retry budget, so that retries during an outage cannot multiply the load on the
replicas that are left (`AllowRetry`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from actors.kernel import ActorRef, Ask, SyncActor
from actors.kernel.frozen import quick_init
from actors.router.balancer import Balancer, LoadView, affinity_pick, name_hash
from actors.router.groups import ModelGroup, QueueFull, RetryBudget
from actors.router.rules import ModelChoice, RequestTraits, VirtualModelSettings, preference
from actors.router.settings import (
    ModelSettings,
    RetryBudgetSettings,
    RouterSettings,
    RoutingSettings,
)

__all__ = [
    "AllowRetry",
    "AwaitRoom",
    "ListModels",
    "ModelAvailability",
    "ModelEntry",
    "ModelSettings",
    "QueueFull",
    "Reconfigure",
    "RequestEnded",
    "RetryBudgetSettings",
    "RetryEnded",
    "Route",
    "RouteDecision",
    "RouterActor",
    "RouterSettings",
    "RoutingSettings",
    "UnknownModel",
]

log = structlog.get_logger("actors.router.actor")

REQUESTED = "requested"
NO_TRAITS = RequestTraits()  # immutable: one shared instance for requests without traits


class UnknownModel(LookupError):
    """The requested model id is neither a configured model nor an alias."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist")
        self.model = model


@quick_init
@dataclass(frozen=True, slots=True)
class Route(Ask["RouteDecision"]):
    """Ask: the model and replicas for a request to this id, alias or virtual model, in the
    order to try them."""

    model: str
    traits: RequestTraits = NO_TRAITS


@quick_init
@dataclass(frozen=True, slots=True)
class RouteDecision:
    model: str  # the canonical public id
    context_window: int
    candidates: tuple[ActorRef, ...]  # in the order to try them
    max_attempts: int
    deadline: float  # seconds until the first byte, all tries included
    panic: bool = False  # too few usable replicas: health is ignored
    saturated: bool = False  # a usable replica is merely full: waiting for room may help
    queue_timeout: float = 10.0  # how long the request may wait for room, when saturated
    reason: str = REQUESTED  # why this model: a rule, a fallback, the context window
    supports_n: bool = True  # every replica honours n > 1

    @property
    def rerouted(self) -> bool:
        """Whether the router chose another model than the one the client named."""
        return self.reason != REQUESTED


@dataclass(frozen=True, slots=True)
class AllowRetry(Ask["bool"]):
    """Ask: may a request for this (canonical) model be tried once more? If yes, the retry
    counts as in flight until `RetryEnded`."""

    model: str


@dataclass(frozen=True, slots=True)
class AwaitRoom(Ask["None"]):
    """Ask: a future that resolves when a request for this model ends (room may have freed).
    Raises QueueFull when the model's wait queue is full."""

    model: str


@dataclass(frozen=True, slots=True)
class ModelAvailability(Ask["dict[str, tuple[int, int]]"]):
    """Ask: for each configured model, (usable replicas, replicas), in configuration order.
    Usable: healthy and circuit not open (a full replica still counts)."""


@dataclass(frozen=True, slots=True)
class RetryEnded:
    """Notify: a retry that AllowRetry granted has ended, however."""

    model: str


@quick_init
@dataclass(frozen=True, slots=True)
class RequestEnded:
    """Notify: a request that Route counted as in flight has ended, however."""

    model: str


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """Ask: route by these settings from now on (a reload). `names` and `loads` are each
    model's replicas, all of them running by the time this arrives."""

    settings: RouterSettings
    names: Mapping[str, tuple[str, ...]]
    loads: Mapping[str, LoadView]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    owned_by: str
    canonical: str  # the model an alias points to (itself for a model)


@dataclass(frozen=True, slots=True)
class ListModels(Ask["tuple[ModelEntry, ...]"]):
    """Ask: every model id and alias, each once, in configuration order."""


class RouterActor(SyncActor):
    def __init__(
        self,
        settings: RouterSettings,
        resolve: Callable[[str], ActorRef],
        loads: Mapping[str, LoadView],
        *,
        names: Mapping[str, tuple[str, ...]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`resolve` maps a backend name ("mixtral-8x7b#0") to its ref; the backends start
        before the router, so they exist by the time on_start runs. `loads` are the replicas'
        live gauges, by backend name; `names` each model's replicas (by default
        "<model>#<index>")."""
        self._settings = settings
        self._resolve = resolve
        self._loads = loads
        self._names = names or {m.name: tuple(m.backend_names()) for m in settings.models}
        self._rng = rng or random.Random()
        self._by_id: dict[str, ModelSettings] = {}
        self._virtual: dict[str, VirtualModelSettings] = {}
        self._groups: dict[str, ModelGroup] = {}
        self._entries: tuple[ModelEntry, ...] = ()
        # Ends (RequestEnded, RetryEnded) with nothing in flight to end: a request ended
        # twice, or one from before a restart. Counted so that a double end cannot hide.
        self._unmatched_ends = 0

    async def on_start(self) -> None:
        self._build()

    def _build(self) -> None:
        """(Re)build the routing tables. A model that stays keeps its requests in flight,
        its retries and its wait queue; waiters of a model that is gone are woken, to find
        it gone."""
        previous = self._groups
        self._groups, self._by_id, self._virtual = {}, {}, {}
        entries = []
        for model in self._settings.models:
            names = self._names[model.name]
            group = ModelGroup(
                model,
                tuple(self._resolve(n) for n in names),
                tuple(self._loads[n] for n in names),
                Balancer(model.routing.policy, self._rng),
                RetryBudget(model.routing.retry_budget),
                tuple(name_hash(n) for n in names),
            )
            old = previous.pop(model.name, None)
            if old is not None:
                group.budget.active, group.budget.retrying = old.budget.active, old.budget.retrying
                group.waiting = old.waiting
            self._groups[model.name] = group
            for model_id in (model.name, *model.aliases):
                self._by_id[model_id] = model
                entries.append(ModelEntry(model_id, model.owned_by, model.name))
        for virtual in self._settings.virtual_models:
            self._virtual[virtual.name] = virtual
            entries.append(ModelEntry(virtual.name, virtual.owned_by, virtual.name))
        self._entries = tuple(entries)
        for gone in previous.values():
            gone.wake_all()

    def handle(self, message: Any) -> Any:
        match message:
            case Route(model=model_id, traits=traits):
                return self._route(model_id, traits)
            # A request may end after a reload removed its model: its group is gone.
            case AllowRetry(model=model_id):
                group = self._groups.get(model_id)
                return group is not None and group.budget.try_retry()
            case RetryEnded(model=model_id):
                if (group := self._groups.get(model_id)) is not None:
                    if group.budget.retrying == 0:
                        self._unmatched_ends += 1
                    group.budget.retrying = max(0, group.budget.retrying - 1)
            case RequestEnded(model=model_id):
                if (group := self._groups.get(model_id)) is not None:
                    if group.budget.active == 0:
                        self._unmatched_ends += 1
                    group.budget.active = max(0, group.budget.active - 1)
                    group.wake_one()
            case AwaitRoom(model=model_id):
                if (group := self._groups.get(model_id)) is None:
                    raise QueueFull(model_id)
                return group.wait_for_room()
            case Reconfigure(settings=settings, names=names, loads=loads):
                self._settings, self._names, self._loads = settings, names, loads
                self._build()
                log.info("router_reconfigured", models=list(self._groups))
            case ModelAvailability():
                now = time.monotonic()
                return {
                    name: (
                        sum(1 for load in g.loads if load.healthy and now >= load.blocked_until),
                        len(g.loads),
                    )
                    for name, g in self._groups.items()
                }
            case ListModels():
                return self._entries
            case _:
                return super().handle(message)
        return None

    def _route(self, model_id: str, traits: RequestTraits) -> RouteDecision:
        now = time.monotonic()
        virtual = self._virtual.get(model_id)
        if virtual is not None:
            names, why = preference(virtual, traits)
            choice = self._first_capable(names, traits, now, f"{model_id}: {why}")
        else:
            model = self._by_id.get(model_id)
            if model is None:
                raise UnknownModel(model_id)
            choice = self._for_model(model, traits, now)
        if choice.reason != REQUESTED:
            log.info("model_routed", requested=model_id, model=choice.model, reason=choice.reason)
        return self._decide(self._groups[choice.model], now, choice.reason, traits.prefix_key)

    def _usable(self, name: str, now: float) -> bool:
        return any(load.has_room(now) for load in self._groups[name].loads)

    def _fits(self, name: str, traits: RequestTraits) -> bool:
        return self._groups[name].model.context_window >= traits.needed_tokens

    def _first_capable(
        self, names: tuple[str, ...], traits: RequestTraits, now: float, why: str
    ) -> ModelChoice:
        """Cheapest capable first: the first model, in the configured order, whose context
        window fits the request and that has a usable replica."""
        fitting = [n for n in names if self._fits(n, traits)]
        if not fitting:
            largest = max(names, key=lambda n: self._groups[n].model.context_window)
            return ModelChoice(largest, f"{why}; none fits ~{traits.needed_tokens} tokens")
        for name in fitting:
            if self._usable(name, now):
                return ModelChoice(name, f"{why}; first that fits and is available")
        return ModelChoice(fitting[0], f"{why}; none available, trying the first that fits")

    def _for_model(self, model: ModelSettings, traits: RequestTraits, now: float) -> ModelChoice:
        """The model itself, or a fallback the client allows and the key may use: a larger
        window for a prompt that does not fit, or the next model when no replica is usable.
        Without such a fallback, the request gets what it would have got without one."""
        reason = REQUESTED
        bigger = model.context_fallback
        if (
            bigger is not None
            and traits.allow_fallback
            and traits.permits(bigger)
            and not self._fits(model.name, traits)
        ):
            reason = (
                f"context: ~{traits.needed_tokens} tokens exceed {model.name}'s "
                f"{model.context_window}"
            )
            model = self._groups[bigger].model
        if model.fallbacks and traits.allow_fallback and not self._usable(model.name, now):
            for fallback in model.fallbacks:
                if (
                    traits.permits(fallback)
                    and self._fits(fallback, traits)
                    and self._usable(fallback, now)
                ):
                    return ModelChoice(fallback, f"fallback: no usable replica of {model.name}")
        return ModelChoice(model.name, reason)

    def _decide(
        self, group: ModelGroup, now: float, reason: str, routing_key: int | None
    ) -> RouteDecision:
        model = group.model
        loads = group.loads
        usable, full = 0, False  # replicas with room; a healthy one without (just busy)
        for load in loads:  # one pass, no generators: this runs for every request
            if load.has_room(now):
                usable += 1
            elif (
                load.healthy and now >= load.blocked_until and load.in_flight >= load.max_in_flight
            ):
                full = True
        panic = usable < model.routing.panic_threshold * len(loads)
        saturated = usable == 0 and full
        order = group.balancer.order(loads, now=now, panic=panic)
        if routing_key is not None and model.routing.prefix_affinity and not panic:
            sticky = affinity_pick(
                loads,
                group.name_hashes,
                routing_key,
                now=now,
                load_factor=model.routing.affinity_load_factor,
                min_in_flight=model.routing.affinity_min_in_flight,
            )
            if sticky is not None and order[0] != sticky:
                order.remove(sticky)
                order.insert(0, sticky)
        if panic:
            log.warning("routing_panic", model=model.name, usable=usable, replicas=len(loads))
        routing = model.routing
        group.budget.active += 1  # until RequestEnded
        return RouteDecision(
            model=model.name,
            context_window=model.context_window,
            candidates=tuple([group.refs[i] for i in order]),
            max_attempts=routing.max_attempts,
            deadline=routing.deadline,
            panic=panic,
            saturated=saturated,
            queue_timeout=routing.queue_timeout,
            reason=reason,
            supports_n=model.supports_n,
        )

    def introspect(self) -> dict[str, Any]:
        return {
            "models": {
                name: {
                    "in_flight": group.budget.active,
                    "retrying": group.budget.retrying,
                    "waiting": sum(1 for w in group.waiting if not w.done()),
                }
                for name, group in self._groups.items()
            },
            "ids": len(self._entries),
            "unmatched_ends": self._unmatched_ends,
        }
