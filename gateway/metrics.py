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
from typing import Literal

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


class GatewayMetrics:
    def __init__(self, root: ActorRef, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir` defaults to $PROMETHEUS_MULTIPROC_DIR (set by the workers'
        parent); without one, this process's metrics are all there is."""
        multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)  # where the metrics live
        registry = self.registry
        self.requests = Counter(
            "citadel_requests",
            "Requests answered, by served model, backend, endpoint and status class.",
            ["model", "backend", "endpoint", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "citadel_request_duration_seconds",
            "Time from the request's arrival to the end of its answer (streams included).",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "citadel_time_to_first_token_seconds",
            "Time from the request's arrival to the first event of its stream.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "citadel_gateway_overhead_seconds",
            "The gateway's own share of a request: its duration minus the time spent waiting "
            "on the upstream.",
            ["endpoint"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
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
        self.tokens = Counter(
            "citadel_tokens",
            "Tokens the upstreams reported, by served model, key id and kind (prompt, completion).",
            ["model", "key", "kind"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "citadel_rate_limited",
            "Requests refused by a rate limit, by kind (requests, tokens, concurrency, "
            "unavailable).",
            ["kind"],
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


class TreeCollector(Collector):
    """Backend and actor gauges, read from the live actor tree at scrape time."""

    def __init__(self, root: ActorRef) -> None:
        self._root = root

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "citadel_backend_in_flight", "Requests in flight per backend.", labels=["backend"]
        )
        healthy = GaugeMetricFamily(
            "citadel_backend_healthy",
            "1 if the backend passes its health probes.",
            labels=["backend"],
        )
        circuit = GaugeMetricFamily(
            "citadel_backend_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["backend"],
        )
        latency = GaugeMetricFamily(
            "citadel_backend_latency_seconds",
            "The balancer's latency estimate (peak EWMA) per backend.",
            labels=["backend"],
        )
        restarts = GaugeMetricFamily(
            "citadel_actor_restarts", "Restarts of each actor since start.", labels=["actor"]
        )
        depth = GaugeMetricFamily(
            "citadel_actor_mailbox_depth", "Messages waiting per actor.", labels=["actor"]
        )
        running = GaugeMetricFamily(
            "citadel_actor_running", "1 if the actor is running.", labels=["actor"]
        )
        backlog = GaugeMetricFamily(
            "citadel_usage_ledger_backlog", "Usage records waiting to be written to the ledger."
        )
        for node in _walk(self._root.snapshot()):
            restarts.add_metric([node.path], node.restarts)
            depth.add_metric([node.path], node.mailbox_depth)
            running.add_metric([node.path], 1.0 if node.state.value == "running" else 0.0)
            details = node.details
            if "backlog" in details:
                backlog.add_metric([], details["backlog"])
            if "circuit" in details:
                in_flight.add_metric([node.name], details["in_flight"])
                healthy.add_metric([node.name], 1.0 if details["healthy"] else 0.0)
                circuit.add_metric([node.name], _CIRCUIT_VALUE.get(details["circuit"], 2.0))
                latency.add_metric([node.name], details["latency_s"])
        yield from (in_flight, healthy, circuit, latency, restarts, depth, running, backlog)


class TreeSampler:
    """The tree gauges for multiprocess mode, where custom collectors would show only the
    worker that answers the scrape: each worker writes its view into multiprocess gauges
    (`sample()`, every second and at each scrape), aggregated over the live workers."""

    def __init__(self, root: ActorRef, registry: CollectorRegistry) -> None:
        self._root = root

        def gauge(name: str, doc: str, label: str, mode: _LiveMode) -> Gauge:
            return Gauge(name, doc, [label], registry=registry, multiprocess_mode=mode)

        self.in_flight = gauge(
            "citadel_backend_in_flight", "Requests in flight per backend.", "backend", "livesum"
        )
        self.healthy = gauge(
            "citadel_backend_healthy",
            "1 if the backend passes its health probes (in every worker).",
            "backend",
            "livemin",
        )
        self.circuit = gauge(
            "citadel_backend_circuit_state",
            "Circuit breaker state, the worst of the workers': 0 closed, 1 half-open, 2 open.",
            "backend",
            "livemax",
        )
        self.latency = gauge(
            "citadel_backend_latency_seconds",
            "The balancer's latency estimate (peak EWMA) per backend, the workers' highest.",
            "backend",
            "livemax",
        )
        self.restarts = gauge(
            "citadel_actor_restarts",
            "Restarts of each actor since its worker started, summed over workers.",
            "actor",
            "livesum",
        )
        self.depth = gauge(
            "citadel_actor_mailbox_depth",
            "Messages waiting per actor, the workers' highest.",
            "actor",
            "livemax",
        )
        self.running = gauge(
            "citadel_actor_running",
            "1 if the actor is running in every worker.",
            "actor",
            "livemin",
        )

        self.backlog = Gauge(
            "citadel_usage_ledger_backlog",
            "Usage records waiting to be written to the ledger, summed over workers.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def sample(self) -> None:
        for node in _walk(self._root.snapshot()):
            self.restarts.labels(node.path).set(node.restarts)
            self.depth.labels(node.path).set(node.mailbox_depth)
            self.running.labels(node.path).set(1.0 if node.state.value == "running" else 0.0)
            details = node.details
            if "backlog" in details:
                self.backlog.set(details["backlog"])
            if "circuit" in details:
                self.in_flight.labels(node.name).set(details["in_flight"])
                self.healthy.labels(node.name).set(1.0 if details["healthy"] else 0.0)
                self.circuit.labels(node.name).set(_CIRCUIT_VALUE.get(details["circuit"], 2.0))
                self.latency.labels(node.name).set(details["latency_s"])


def _walk(node: ActorSnapshot) -> Iterator[ActorSnapshot]:
    yield node
    for child in node.children:
        yield from _walk(child)


def status_class(status: int) -> str:
    return "499" if status == 499 else f"{status // 100}xx"
