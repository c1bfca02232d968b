"""The gateway's supervision tree, built from settings, and changed in place on a reload.

root                         one_for_one, intensity 3 / 10 s
├── backends                 one_for_one, one BackendActor per replica, jittered backoff
│   ├── mixtral-8x7b#0
│   └── …
├── keystore                 PykkaHost of KeyStoreActor (SQLite), or PgKeyStoreActor
│                            (PostgreSQL: LISTEN/NOTIFY), with auth.key_store only
├── auth                     AuthActor
├── limiter                  RateLimiterActor (state local, or in Redis)
├── ledger_writer            PykkaHost of LedgerWriterActor (SQLite), or PgLedgerWriterActor
│                            (PostgreSQL, spilling to SQLite while it is down), with usage only
├── ledger                   UsageLedgerActor (batches; flushed on stop)
└── router                   RouterActor

A `TreeLayout` is what the tree is built from: the router's settings, each model's replica
names and each replica's live load gauge. A reload computes the next layout from the current
one (`TreeLayout.next`): a replica whose settings are unchanged keeps its name, actor, pool
and load; a new or changed one gets a fresh name (names are never reused, so metrics and logs
of a retired replica never mix with its successor's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from actors.auth.actor import AuthActor, AuthSources, ForgetAllKeys, ForgetKey
from actors.auth.pgstore import PgKeyStoreActor
from actors.auth.store import KeyStoreActor
from actors.backend.actor import BackendActor
from actors.backend.breaker import BreakerSettings
from actors.backend.settings import BackendSettings
from actors.kernel import (
    ActorRef,
    Backoff,
    ChildSpec,
    MailboxConfig,
    PykkaHost,
    Strategy,
    Supervisor,
    ask_settled,
)
from actors.ledger.actor import LedgerSettings, UsageLedgerActor
from actors.ledger.pgstore import PgLedgerWriterActor
from actors.ledger.store import Group, LedgerWriterActor, Summarize
from actors.limiter.actor import LimiterSettings, RateLimiterActor
from actors.limiter.local import LocalLimits, Subject
from actors.postgres.schema import is_postgres
from actors.router.actor import ModelSettings, RouterActor, RouterSettings
from actors.router.balancer import ReplicaLoad
from actors.router.settings import replica_name

ROOT = "root"
BACKENDS = f"{ROOT}/backends"
ROUTER = f"{ROOT}/router"
AUTH = f"{ROOT}/auth"
LIMITER = f"{ROOT}/limiter"
LEDGER = f"{ROOT}/ledger"
LEDGER_WRITER = f"{ROOT}/ledger_writer"
KEYSTORE = f"{ROOT}/keystore"

# A replica's actor restarts after a crash without hammering a service that may be down.
BACKEND_BACKOFF = Backoff(initial=0.1, maximum=10.0, multiplier=2.0, jitter=0.3, reset_after=60)
# Mailboxes sized for thousands of concurrent requests asking for leases and routes at once.
HOT_MAILBOX = MailboxConfig(capacity=16384)


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica as its BackendActor is built: what, if changed, needs a new actor."""

    model: str
    backend: BackendSettings
    breaker: BreakerSettings
    default_latency: float
    decay: float

    @staticmethod
    def of(model: ModelSettings, backend: BackendSettings) -> Replica:
        routing = model.routing
        return Replica(model.name, backend, model.breaker, routing.default_latency, routing.decay)


@dataclass(frozen=True, slots=True)
class TreeLayout:
    settings: RouterSettings
    names: dict[str, tuple[str, ...]]  # model -> its replicas' names, in configured order
    replicas: dict[str, Replica]  # name -> how its actor is built
    loads: dict[str, ReplicaLoad]  # name -> live gauge (BackendActor writes, router reads)
    used: frozenset[str]  # every name any layout of this tree has given out

    @staticmethod
    def first(settings: RouterSettings) -> TreeLayout:
        return TreeLayout.next(settings, None)

    @staticmethod
    def next(settings: RouterSettings, previous: TreeLayout | None) -> TreeLayout:
        """The layout for `settings`, keeping every replica of `previous` that is unchanged."""
        kept: dict[Replica, list[str]] = {}
        old_loads: dict[str, ReplicaLoad] = {}
        used: frozenset[str] = frozenset()
        if previous is not None:
            for name, replica in previous.replicas.items():
                kept.setdefault(replica, []).append(name)
            old_loads, used = previous.loads, previous.used
        names: dict[str, tuple[str, ...]] = {}
        replicas: dict[str, Replica] = {}
        loads: dict[str, ReplicaLoad] = {}
        for model in settings.models:
            model_names = []
            counter = 0
            for backend in model.backends:
                replica = Replica.of(model, backend)
                same = kept.get(replica)
                if same:
                    name = same.pop(0)
                    loads[name] = old_loads[name]
                else:
                    while (name := replica_name(model.name, counter)) in used or name in replicas:
                        counter += 1
                    loads[name] = ReplicaLoad(
                        name,
                        weight=backend.weight,
                        max_in_flight=backend.profile.max_in_flight,
                        default_latency=replica.default_latency,
                        decay=replica.decay,
                    )
                model_names.append(name)
                replicas[name] = replica
            names[model.name] = tuple(model_names)
        return TreeLayout(settings, names, replicas, loads, used | set(replicas))

    def added_since(self, previous: TreeLayout) -> list[str]:
        return [name for name in self.replicas if name not in previous.replicas]

    def retired_since(self, previous: TreeLayout) -> list[str]:
        return [name for name in previous.replicas if name not in self.replicas]

    def backend_spec(self, name: str) -> ChildSpec:
        replica = self.replicas[name]
        factory = partial(
            BackendActor,
            name,
            replica.model,
            replica.backend,
            load=self.loads[name],
            breaker=replica.breaker,
            default_latency=replica.default_latency,
        )
        return ChildSpec(
            name=name,
            factory=factory,
            mailbox=HOT_MAILBOX,
            backoff=BACKEND_BACKOFF,
            shutdown_timeout=10.0,
        )


class LiveLayout:
    """The layout the running tree has: the supervisors' factories read it, so that a
    supervisor restarted after a reload rebuilds the reloaded tree, not the first one.
    `auth` is AuthActor's key sources (without the store ref, which the tree resolves)."""

    __slots__ = ("auth", "current", "key_store", "ledger", "limiter", "local_limits")

    def __init__(
        self,
        layout: TreeLayout,
        auth: AuthSources | None = None,
        key_store: str | None = None,
        limiter: LimiterSettings | None = None,
        ledger: LedgerSettings | None = None,
    ) -> None:
        self.current = layout
        self.auth = auth or AuthSources()
        self.key_store = key_store
        self.limiter = limiter or LimiterSettings()
        self.ledger = ledger
        self.local_limits = LocalLimits()  # the limiter's state, kept across its restarts

    def use(self, *, layout: TreeLayout | None = None, auth: AuthSources | None = None) -> None:
        """What a reload changes, and the one way it changes it: the replicas' layout (which
        a restarted `backends` supervisor rebuilds) and AuthActor's key sources."""
        if layout is not None:
            self.current = layout
        if auth is not None:
            self.auth = auth


def gateway_tree(live: LiveLayout, lookup: Callable[[str], ActorRef]) -> ChildSpec:
    """The root spec. `lookup` resolves a path to a ref (ActorSystem.lookup)."""

    def backends() -> Supervisor:
        layout = live.current
        specs = [layout.backend_spec(name) for name in layout.replicas]
        return Supervisor(specs, strategy=Strategy.ONE_FOR_ONE, intensity=50)

    def router() -> RouterActor:
        layout = live.current
        return RouterActor(
            layout.settings,
            lambda name: lookup(f"{BACKENDS}/{name}"),
            layout.loads,
            names=layout.names,
        )

    def auth() -> AuthActor:
        store = lookup(KEYSTORE) if live.key_store is not None else None
        return AuthActor(replace(live.auth, store=store))

    def key_changed(key_id: str | None) -> None:
        """A key changed in the shared store: AuthActor's cached lookup of it is stale."""
        try:
            auth_ref = lookup(AUTH)
        except LookupError:
            return  # not started yet: its cache is empty
        auth_ref.notify(ForgetKey(key_id) if key_id is not None else ForgetAllKeys())

    async def spend_of(subject: Subject) -> float:
        """What a budget's period has spent so far, by the usage ledger (every record
        written first: the ledger answers a summary once its buffer is on disk)."""
        assert subject.period is not None
        kind, _, name = subject.name.partition(":")
        group: Group = "key" if kind == "key" else "model"
        rows = await ask_settled(
            lookup(LEDGER), Summarize((group,), since=subject.period.start), timeout=30
        )
        return float(sum(row["total_tokens"] for row in rows if row[group] == name))

    children = [ChildSpec("backends", backends)]
    location = live.key_store
    if location is not None and is_postgres(location):
        children.append(ChildSpec("keystore", lambda: PgKeyStoreActor(location, key_changed)))
    elif location is not None:
        children.append(
            ChildSpec("keystore", lambda: PykkaHost(lambda: KeyStoreActor.start(location)))
        )
    children += [
        ChildSpec("auth", auth, mailbox=HOT_MAILBOX),
        ChildSpec(
            "limiter",
            lambda: RateLimiterActor(
                live.limiter, live.local_limits, spend_of if live.ledger is not None else None
            ),
            mailbox=HOT_MAILBOX,
        ),
    ]
    ledger = live.ledger
    if ledger is not None:  # the writer first: it stops after the ledger has flushed to it
        writer: Callable[[], Any]
        if is_postgres(ledger.path):
            writer = partial(PgLedgerWriterActor, ledger.path, ledger.spill_path())
        else:
            writer = partial(PykkaHost, lambda: LedgerWriterActor.start(ledger.path))
        children += [
            ChildSpec("ledger_writer", writer, shutdown_timeout=30.0),
            ChildSpec(
                "ledger",
                lambda: UsageLedgerActor(
                    lookup(LEDGER_WRITER),
                    batch_size=ledger.batch_size,
                    flush_interval=ledger.flush_interval,
                ),
                mailbox=HOT_MAILBOX,
                shutdown_timeout=60.0,
            ),
        ]
    children.append(ChildSpec("router", router, mailbox=HOT_MAILBOX))
    return ChildSpec(
        ROOT,
        lambda: Supervisor(children, strategy=Strategy.ONE_FOR_ONE, intensity=3),
        shutdown_timeout=90.0,
    )
