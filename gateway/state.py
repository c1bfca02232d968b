"""What the HTTP edge holds while the gateway runs, under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from actors.kernel import ActorRef, ActorSystem
from gateway.auth import Authenticator
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class GatewayState:
    config: GatewayConfig
    system: ActorSystem
    root: ActorRef
    router: ActorRef
    auth: Authenticator
    metrics: GatewayMetrics
    started: int  # unix time, the "created" of /v1/models entries


STATE = web.AppKey("citadel_state", GatewayState)
CONFIG = web.AppKey("citadel_config", GatewayConfig)


class RequestContext:
    """What the edge learns about one request as it goes, for headers and the access log."""

    __slots__ = (
        "attempts",
        "backend",
        "first_byte_at",
        "key_id",
        "model",
        "request_id",
        "route_reason",
        "served_model",
        "started",
        "upstream_seconds",
    )

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started  # perf_counter() at arrival
        self.key_id: str | None = None
        self.model: str | None = None  # as the client named it
        self.served_model: str | None = None  # the configured model that served it
        self.route_reason: str | None = None  # set when the router chose another model
        self.backend: str | None = None
        self.attempts = 0  # tries across replicas (1 unless a replica failed before a byte)
        self.upstream_seconds = 0.0  # time spent waiting on upstreams, all tries
        self.first_byte_at: float | None = None  # perf_counter() at a stream's first event


REQUEST = web.RequestKey("citadel_request", RequestContext)
