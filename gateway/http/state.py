"""What the HTTP edge holds while the gateway runs, under one typed app key."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from actors.kernel import ActorRef, ActorSystem
from actors.limiter.budget import BudgetClock
from actors.limiter.local import LimitSpec
from actors.tree import LiveLayout
from gateway.cache.settings import CachePolicy
from gateway.cache.store import ResponseCache
from gateway.guardrails.engine import Guard, guard_of
from gateway.guardrails.presidio import PresidioEngines
from gateway.http.metrics import GatewayMetrics
from gateway.process.config import GatewayConfig
from gateway.upstream.exits import ExitRecords

if TYPE_CHECKING:  # the SDK (9 MB of memory) is imported only when tracing is on
    from gateway.tracing.provider import Tracing


class OpenStreams:
    """The streams being relayed, each with a way to end it cleanly: so that a shutdown whose
    grace period runs out can end the rest with an error event rather than a cut."""

    __slots__ = ("_enders", "_next")

    def __init__(self) -> None:
        self._enders: dict[int, Callable[[], None]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._enders)

    def add(self, end: Callable[[], None]) -> int:
        self._next += 1
        self._enders[self._next] = end
        return self._next

    def discard(self, token: int) -> None:
        self._enders.pop(token, None)

    def end_all(self) -> int:
        enders = list(self._enders.values())
        for end in enders:
            end()
        return len(enders)


def this_process() -> str:
    """A gateway process's default name in a fleet's records: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class GatewayState:
    """`config` and what the edge derives from it (`use`) change on a reload
    (gateway.process.reload), between two requests' reads: handlers read them once per request."""

    config: GatewayConfig
    system: ActorSystem
    root: ActorRef
    router: ActorRef
    auth: ActorRef  # AuthActor
    limiter: ActorRef  # RateLimiterActor
    ledger: ActorRef | None  # UsageLedgerActor, with usage.ledger configured
    metrics: GatewayMetrics
    started: int  # unix time, the "created" of /v1/models entries
    streams: OpenStreams
    layout: LiveLayout
    cache: ResponseCache | None = None  # the response cache (its policies: cache_policies)
    tracing: Tracing | None = None  # with tracing.enabled (restart to change)
    config_path: str | None = None  # the file a reload re-reads
    reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Derived from `config` by `use`:
    auth_enabled: bool = False  # some model key exists (else the model endpoints are open)
    model_limits: dict[str, LimitSpec] = field(default_factory=dict)  # each model's own
    prefix_affinity: bool = False  # some model routes by prefix: requests need its hash
    canonical: dict[str, str] = field(default_factory=dict)  # id, alias or virtual -> model
    virtual: frozenset[str] = frozenset()  # the virtual models' names
    cache_policies: dict[str, CachePolicy] = field(default_factory=dict)  # model -> policy
    presidio: PresidioEngines = field(default_factory=PresidioEngines)  # loaded once, kept
    budget_clock: BudgetClock = field(default_factory=BudgetClock)  # periods, in limits' zone
    # This gateway process, in the records it writes to a fleet's shared ledger.
    instance: str = field(default_factory=this_process)
    guards: dict[str, Guard] = field(default_factory=dict)  # model -> its policies' guardrails
    # (model, a key's own policies) -> the model's and the key's together, compiled once
    key_guards: dict[tuple[str, tuple[str, ...]], Guard] = field(default_factory=dict)
    # The exits of this loop turn, their records written on the next (gateway.upstream.exits).
    exit_records: ExitRecords = field(default_factory=ExitRecords)

    def __post_init__(self) -> None:
        self.use(self.config)

    def use(self, config: GatewayConfig) -> None:
        """Serve the next requests by `config` (at start, and on a reload)."""
        self.config = config
        self.auth_enabled = config.auth_sources().enabled
        self.model_limits = {m.name: m.limits for m in config.models}
        self.prefix_affinity = any(m.routing.prefix_affinity for m in config.models)
        self.canonical = {
            model_id: model.name
            for model in config.models
            for model_id in (model.name, *model.aliases)
        }
        self.canonical.update((v.name, v.name) for v in config.virtual_models)
        self.virtual = frozenset(v.name for v in config.virtual_models)
        if self.budget_clock.zone.key != config.limits.budget_timezone:
            self.budget_clock = BudgetClock(config.limits.budget_timezone)
        self.cache_policies = {
            m.name: policy
            for m in config.models
            if (policy := m.cache or config.cache.default).enabled
        }
        self.guards = {
            m.name: guard
            for m in config.models
            if (guard := guard_of(config.guardrails, m.guardrails, self.presidio)).any
        }
        self.key_guards = {}
        if self.cache is not None:
            self.cache.settings = config.cache  # its backend and bounds: restart only

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` for the life of the app (reloads, retiring replicas, samplers); it is
        cancelled when the app stops."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


STATE = web.AppKey("citadel_state", GatewayState)
CONFIG = web.AppKey("citadel_config", GatewayConfig)  # as started; STATE has the current one
CONFIG_PATH = web.AppKey("citadel_config_path", str)
