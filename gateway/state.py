"""What the HTTP edge holds while the gateway runs, under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from actors.kernel import ActorRef, ActorSystem
from gateway.auth import Authenticator
from gateway.config import GatewayConfig


@dataclass(frozen=True, slots=True)
class GatewayState:
    config: GatewayConfig
    system: ActorSystem
    root: ActorRef
    router: ActorRef
    auth: Authenticator
    started: int  # unix time, the "created" of /v1/models entries


STATE = web.AppKey("citadel_state", GatewayState)
CONFIG = web.AppKey("citadel_config", GatewayConfig)


class RequestContext:
    """What the edge learns about one request as it goes, for headers and the access log."""

    __slots__ = ("attempts", "backend", "key_id", "model", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.key_id: str | None = None
        self.model: str | None = None
        self.backend: str | None = None
        self.attempts = 0  # tries across replicas (1 unless a replica failed before a byte)


REQUEST = web.RequestKey("citadel_request", RequestContext)
