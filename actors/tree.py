"""The gateway's supervision tree, built from settings.

root                         one_for_one, intensity 3 / 10 s
├── backends                 one_for_one, one BackendActor per replica, jittered backoff
│   ├── mixtral-8x7b#0
│   └── …
└── router                   RouterActor
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from actors.backend import BackendActor
from actors.balancer import ReplicaLoad
from actors.kernel import (
    ActorRef,
    Backoff,
    ChildSpec,
    MailboxConfig,
    Strategy,
    Supervisor,
)
from actors.router import RouterActor, RouterSettings

ROOT = "root"
BACKENDS = f"{ROOT}/backends"
ROUTER = f"{ROOT}/router"

# A replica's actor restarts after a crash without hammering a service that may be down.
BACKEND_BACKOFF = Backoff(initial=0.1, maximum=10.0, multiplier=2.0, jitter=0.3, reset_after=60)
# Mailboxes sized for thousands of concurrent requests asking for leases and routes at once.
HOT_MAILBOX = MailboxConfig(capacity=16384)


def replica_loads(settings: RouterSettings) -> dict[str, ReplicaLoad]:
    """One live load gauge per replica, shared by its BackendActor (writer) and the router
    (reader) for the life of the tree."""
    loads = {}
    for model in settings.models:
        for name, backend in zip(model.backend_names(), model.backends, strict=True):
            loads[name] = ReplicaLoad(
                name,
                weight=backend.weight,
                max_in_flight=backend.max_in_flight,
                default_latency=model.routing.default_latency,
                decay=model.routing.decay,
            )
    return loads


def backend_specs(settings: RouterSettings, loads: dict[str, ReplicaLoad]) -> list[ChildSpec]:
    specs = []
    for model in settings.models:
        for name, backend in zip(model.backend_names(), model.backends, strict=True):
            factory = partial(
                BackendActor,
                name,
                model.name,
                backend,
                load=loads[name],
                breaker=model.breaker,
                default_latency=model.routing.default_latency,
            )
            specs.append(
                ChildSpec(
                    name=name,
                    factory=factory,
                    mailbox=HOT_MAILBOX,
                    backoff=BACKEND_BACKOFF,
                    shutdown_timeout=10.0,
                )
            )
    return specs


def gateway_tree(settings: RouterSettings, lookup: Callable[[str], ActorRef]) -> ChildSpec:
    """The root spec. `lookup` resolves a path to a ref (ActorSystem.lookup)."""
    loads = replica_loads(settings)
    backends = ChildSpec(
        "backends",
        lambda: Supervisor(
            backend_specs(settings, loads), strategy=Strategy.ONE_FOR_ONE, intensity=50
        ),
    )
    router = ChildSpec(
        "router",
        lambda: RouterActor(settings, lambda name: lookup(f"{BACKENDS}/{name}"), loads),
        mailbox=HOT_MAILBOX,
    )
    return ChildSpec(
        ROOT,
        lambda: Supervisor([backends, router], strategy=Strategy.ONE_FOR_ONE, intensity=3),
        shutdown_timeout=30.0,
    )
