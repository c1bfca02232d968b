"""Real servers on free ports: mock model services and the gateway in front of them."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from actors.backend.breaker import BreakerSettings
from actors.backend.probe import HealthSettings
from actors.backend.settings import BackendSettings, BackendTimeouts
from actors.ledger.actor import LedgerSettings
from actors.limiter.local import LimitSpec
from actors.router.actor import RoutingSettings
from actors.router.rules import VirtualModelSettings
from gateway.cache.settings import CachePolicy, CacheSettings
from gateway.guardrails.settings import Policy
from gateway.http.state import STATE, GatewayState
from gateway.mock.server import MOCK_STATE, MockSettings, MockState, create_mock_app
from gateway.process.config import (
    AuthSettings,
    ConnectionSettings,
    GatewayConfig,
    GatewayModel,
    LimitSettings,
    LoggingSettings,
    MetricsSettings,
)
from gateway.process.server import RunningServer, start_gateway, start_server
from gateway.tracing.settings import TracingSettings

API_KEY = "sk-test-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef"

# Every read a test makes is bounded: a hang fails the test in seconds, not at pytest-timeout.
READ_TIMEOUT_S = 30.0
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=READ_TIMEOUT_S)


def bounded_client(**options: Any) -> aiohttp.ClientSession:
    """An aiohttp client whose every request is bounded (CLIENT_TIMEOUT)."""
    return aiohttp.ClientSession(timeout=CLIENT_TIMEOUT, **options)


async def until(predicate: Callable[[], bool], passes: int = 100_000) -> None:
    """Let the event loop run, one pass at a time, until `predicate` holds: for state that
    other tasks on this loop change and that offers no event to wait on. No wall-clock time
    is involved; `passes` bounds it."""
    for _ in range(passes):
        if predicate():
            return
        await asyncio.sleep(0)  # one loop pass, not a delay
    raise AssertionError("the condition never held")


@dataclass
class Mock:
    server: RunningServer
    state: MockState

    @property
    def url(self) -> str:
        return self.server.url

    async def kill(self) -> None:
        """Die like a crashed process: every connection dropped, nothing listening."""
        runner = self.server.runner
        if runner.server is not None:
            for protocol in list(runner.server.connections):
                if protocol.transport is not None:
                    protocol.transport.abort()
        for site in list(runner.sites):
            await site.stop()


@dataclass
class Deployment:
    """A gateway and the mocks behind it; `mocks[model]` lists that model's replicas."""

    gateway: RunningServer
    mocks: dict[str, list[Mock]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def state(self) -> GatewayState:
        return self.gateway.runner.app[STATE]


@asynccontextmanager
async def mock_service(**settings: Any) -> AsyncIterator[Mock]:
    app = create_mock_app(MockSettings(**settings))
    server = await start_server(app, "127.0.0.1", 0)
    try:
        yield Mock(server, app[MOCK_STATE])
    finally:
        await server.close()


@dataclass(frozen=True)
class ModelPlan:
    name: str
    served_as: str | None = None  # the upstream's name, when it differs
    replicas: int = 1
    aliases: tuple[str, ...] = ()
    context_window: int = 4096
    timeouts: BackendTimeouts = field(default_factory=BackendTimeouts)
    max_in_flight: int | None = None  # the backend kind's default
    mock: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)  # more BackendSettings fields
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    fallbacks: tuple[str, ...] = ()
    context_fallback: str | None = None
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    cache: CachePolicy | None = None
    guardrails: tuple[str, ...] = ()
    limits: LimitSpec = field(default_factory=LimitSpec)  # the whole model's


@asynccontextmanager
async def deployment(
    plans: Sequence[ModelPlan],
    *,
    api_keys: tuple[str, ...] = (API_KEY,),
    max_body_bytes: int = 1024 * 1024,
    virtual_models: tuple[VirtualModelSettings, ...] = (),
    metrics: MetricsSettings | None = None,
    logging: LoggingSettings | None = None,
    connections: ConnectionSettings | None = None,
    auth: AuthSettings | None = None,
    usage: LedgerSettings | None = None,
    cache: CacheSettings | None = None,
    guardrails: tuple[Policy, ...] = (),
    limits: LimitSettings | None = None,
    tracing: TracingSettings | None = None,
) -> AsyncIterator[Deployment]:
    started: list[RunningServer] = []
    mocks: dict[str, list[Mock]] = {}
    try:
        models = []
        for plan in plans:
            backends = []
            for _ in range(plan.replicas):
                app = create_mock_app(MockSettings(model=plan.served_as or plan.name, **plan.mock))
                server = await start_server(app, "127.0.0.1", 0)
                started.append(server)
                mocks.setdefault(plan.name, []).append(Mock(server, app[MOCK_STATE]))
                backends.append(
                    BackendSettings(
                        url=server.url,
                        model=plan.served_as,
                        timeouts=plan.timeouts,
                        max_in_flight=plan.max_in_flight,
                        health=plan.health,
                        **plan.backend,
                    )
                )
            models.append(
                GatewayModel(
                    name=plan.name,
                    cache=plan.cache,
                    guardrails=plan.guardrails,
                    limits=plan.limits,
                    aliases=plan.aliases,
                    context_window=plan.context_window,
                    backends=tuple(backends),
                    routing=plan.routing,
                    breaker=plan.breaker,
                    fallbacks=plan.fallbacks,
                    context_fallback=plan.context_fallback,
                )
            )
        config = GatewayConfig(
            listen="127.0.0.1:0",
            models=tuple(models),
            virtual_models=virtual_models,
            auth=auth or AuthSettings(api_keys=api_keys, admin_keys=(ADMIN_KEY,)),
            limits=limits or LimitSettings(max_body_bytes=max_body_bytes),
            logging=logging or LoggingSettings(access_log=False),
            metrics=metrics or MetricsSettings(),
            connections=connections or ConnectionSettings(),
            usage=usage,
            cache=cache or CacheSettings(),
            guardrails=guardrails,
            tracing=tracing or TracingSettings(),
        )
        gateway = await start_gateway(config)
        try:
            yield Deployment(gateway, mocks)
        finally:
            await gateway.close()
    finally:
        for server in reversed(started):
            await server.close()


@asynccontextmanager
async def serving_process(config: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`citadel-gateway serve --config` as a real process, once its gateway_listening line is
    out: (the process, its URL); killed on the way out if the test has not stopped it. Its
    output (JSON log lines) stays readable on process.stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while b'"gateway_listening"' not in (line := await process.stdout.readline()):
                assert line, "the gateway exited before listening"
        yield process, str(json.loads(line)["url"])
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
