"""Prometheus metrics: what the gateway does, per model, backend and endpoint.

Collectors live in a registry owned by the app (no process-wide default registry), so tests
and several apps in one process never share counters. Gauges that describe the actor tree
(backend health, circuits, in-flight, actor restarts, mailboxes) are read from the live tree at
scrape time rather than kept up to date on the hot path. Labels are bounded: configured model
and backend names, route templates, status classes; never request ids or user input.

With several worker processes (`workers: N`), prometheus_client's multiprocess mode is on
($PROMETHEUS_MULTIPROC_DIR, set by the parent): every worker writes its counters to files in
that directory and a scrape, whichever worker answers it, sums them. A dead worker's files
stay, so counters never go backwards when a worker is replaced. The tree gauges are then
sampled into multiprocess gauges (`TreeSampler`), aggregated over the live workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from actors.kernel import ActorRef, ActorSnapshot

# LLM requests take from milliseconds (an embedding) to minutes (a long generation).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
# The gateway's own share of a request: tens of microseconds to a few milliseconds.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

_CIRCUIT_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LiveMode = Literal["livesum", "livemin", "livemax"]
_Metric = TypeVar("_Metric", Counter, Histogram)


class Labelled(Generic[_Metric]):
    """A labelled metric whose child for a set of label values is looked up once:
    prometheus_client's `labels()` checks and locks on every call (0.9 µs, five a request on
    the hot path; a dict lookup is 0.05). As many children as the metric itself keeps."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: _Metric) -> None:
        self.metric: _Metric = metric
        self._children: dict[tuple[str, ...], _Metric] = {}

    def labels(self, *values: str) -> _Metric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class GatewayMetrics:
    def __init__(self, root: ActorRef, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir` defaults to $PROMETHEUS_MULTIPROC_DIR (set by the workers'
        parent); without one, this process's metrics are all there is."""
        multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)  # where the metrics live
        registry = self.registry
        self.requests = Labelled(
            Counter(
                "citadel_requests",
                "Requests answered, by served model, backend, endpoint and status class.",
                ["model", "backend", "endpoint", "status"],
                registry=registry,
            )
        )
        self.duration = Labelled(
            Histogram(
                "citadel_request_duration_seconds",
                "Time from the request's arrival to the end of its answer (streams included).",
                ["model", "endpoint"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        )
        self.ttft = Labelled(
            Histogram(
                "citadel_time_to_first_token_seconds",
                "Time from the request's arrival to the first event of its stream.",
                ["model"],
                buckets=TTFT_BUCKETS,
                registry=registry,
            )
        )
        self.overhead = Labelled(
            Histogram(
                "citadel_gateway_overhead_seconds",
                "The gateway's own share of a request: its duration minus the time spent waiting "
                "on the upstream.",
                ["endpoint"],
                buckets=OVERHEAD_BUCKETS,
                registry=registry,
            )
        )
        self.retries = Counter(
            "citadel_retries",
            "Tries moved to another replica before the first byte.",
            ["model"],
            registry=registry,
        )
        self.routed = Counter(
            "citadel_model_routed",
            "Requests served by another model than the one named (virtual, context, fallback).",
            ["requested", "model", "kind"],
            registry=registry,
        )
        self.tokens = Labelled(
            Counter(
                "citadel_tokens",
                "Tokens used, by served model, key id, kind (prompt, completion) and source "
                "(reported by the upstream, or estimated by the gateway when it reports none).",
                ["model", "key", "kind", "source"],
                registry=registry,
            )
        )
        self.incomplete_streams = Counter(
            "citadel_upstream_incomplete_streams",
            "Streams an upstream ended with neither content nor a finish reason (a server "
            "that interrupts a stream for the next request does this), by backend.",
            ["backend"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "citadel_rate_limited",
            "Requests refused by a rate limit, by kind (requests, tokens, concurrency, "
            "unavailable).",
            ["kind"],
            registry=registry,
        )
        self.guardrail_hits = Counter(
            "citadel_guardrail_hits",
            "Guardrail rules that matched, by rule id, direction, action and served model.",
            ["rule", "direction", "action", "model"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "citadel_auth_failures",
            "Requests refused for a missing or wrong key.",
            registry=registry,
        )
        self.sampler: TreeSampler | None = None
        if multiprocess_dir is None:
            registry.register(TreeCollector(root))
            self.exposed = registry
        else:
            # The metrics' own registry is never exposed: its values are in the files.
            self.sampler = TreeSampler(root, registry)
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]

    def handler(self) -> web.Response:
        if self.sampler is not None:
            self.sampler.sample()  # this worker's view, fresh; the others' within a second
        response = web.Response(body=generate_latest(self.exposed))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response


@dataclass(frozen=True, slots=True)
class TreeGauge:
    """A gauge read from the actor tree; `mode` and `across` say how several workers' views
    combine in multiprocess mode."""

    name: str
    doc: str
    label: str | None  # "backend", "actor", or None for a single value
    mode: _LiveMode
    across: str


TREE_GAUGES = (
    TreeGauge(
        "citadel_backend_in_flight", "Requests in flight per backend.", "backend", "livesum",
        "summed over workers",
    ),
    TreeGauge(
        "citadel_backend_healthy", "1 if the backend passes its health probes.", "backend",
        "livemin", "in every worker",
    ),
    TreeGauge(
        "citadel_backend_circuit_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.", "backend", "livemax",
        "the workers' worst",
    ),
    TreeGauge(
        "citadel_backend_latency_seconds",
        "The balancer's latency estimate (peak EWMA) per backend.", "backend", "livemax",
        "the workers' highest",
    ),
    TreeGauge(
        "citadel_actor_restarts", "Restarts of each actor since start.", "actor", "livesum",
        "summed over workers",
    ),
    TreeGauge(
        "citadel_actor_mailbox_depth", "Messages waiting per actor.", "actor", "livemax",
        "the workers' highest",
    ),
    TreeGauge(
        "citadel_actor_running", "1 if the actor is running.", "actor", "livemin",
        "in every worker",
    ),
    TreeGauge(
        "citadel_usage_ledger_backlog", "Usage records waiting to be written to the ledger.",
        None, "livesum", "summed over workers",
    ),
)  # fmt: skip


def tree_values(root: ActorRef) -> Iterator[tuple[str, tuple[str, ...], float]]:
    """(gauge name, label values, value) for every tree gauge, from one snapshot."""
    for node in _walk(root.snapshot()):
        actor = (node.path,)
        yield "citadel_actor_restarts", actor, node.restarts
        yield "citadel_actor_mailbox_depth", actor, node.mailbox_depth
        yield "citadel_actor_running", actor, 1.0 if node.state.value == "running" else 0.0
        details = node.details
        if "backlog" in details:
            yield "citadel_usage_ledger_backlog", (), details["backlog"]
        if "circuit" in details:
            backend = (node.name,)
            yield "citadel_backend_in_flight", backend, details["in_flight"]
            yield "citadel_backend_healthy", backend, 1.0 if details["healthy"] else 0.0
            circuit = _CIRCUIT_VALUE.get(details["circuit"], 2.0)
            yield "citadel_backend_circuit_state", backend, circuit
            yield "citadel_backend_latency_seconds", backend, details["latency_s"]


class TreeCollector(Collector):
    """Backend and actor gauges, read from the live actor tree at scrape time."""

    def __init__(self, root: ActorRef) -> None:
        self._root = root

    def collect(self) -> Iterator[Metric]:
        families = {
            g.name: GaugeMetricFamily(g.name, g.doc, labels=[g.label] if g.label else [])
            for g in TREE_GAUGES
        }
        for name, labels, value in tree_values(self._root):
            families[name].add_metric(list(labels), value)
        yield from families.values()


class TreeSampler:
    """The tree gauges for multiprocess mode, where custom collectors would show only the
    worker that answers the scrape: each worker writes its view into multiprocess gauges
    (`sample()`, every second and at each scrape), combined over the live workers."""

    def __init__(self, root: ActorRef, registry: CollectorRegistry) -> None:
        self._root = root
        self._gauges = {
            g.name: Gauge(
                g.name,
                f"{g.doc.rstrip('.')}, {g.across}.",
                [g.label] if g.label else [],
                registry=registry,
                multiprocess_mode=g.mode,
            )
            for g in TREE_GAUGES
        }

    def sample(self) -> None:
        for name, labels, value in tree_values(self._root):
            gauge = self._gauges[name]
            (gauge.labels(*labels) if labels else gauge).set(value)


def _walk(node: ActorSnapshot) -> Iterator[ActorSnapshot]:
    yield node
    for child in node.children:
        yield from _walk(child)


def status_class(status: int) -> str:
    return "499" if status == 499 else f"{status // 100}xx"
