"""The app factory: routes, the edge middleware, and the actor tree's lifetime.

The actor system starts in a cleanup context, so aiohttp tears it down after the server has
stopped taking requests, in reverse order of set-up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from structlog.contextvars import bind_contextvars, reset_contextvars

from actors.kernel import ActorSystem
from actors.postgres.schema import is_postgres, migrate
from actors.tree import AUTH, LEDGER, LIMITER, ROUTER, LiveLayout, TreeLayout, gateway_tree
from gateway.cache.metrics import CacheMetrics
from gateway.cache.store import ResponseCache
from gateway.http import (
    admin,
    admin_config,
    admin_keys,
    admin_usage,
    console,
    handlers,
    health,
    openapi,
)
from gateway.http.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from gateway.http.metrics import GatewayMetrics, TreeSampler
from gateway.http.state import (
    CONFIG,
    CONFIG_PATH,
    STATE,
    GatewayState,
    OpenStreams,
    this_process,
)
from gateway.process.config import GatewayConfig
from gateway.upstream.exchange import CLIENT_GONE, EXCHANGE, Exchange
from gateway.upstream.headers import put_exchange_headers

if TYPE_CHECKING:
    from gateway.tracing.provider import Tracing

log = structlog.get_logger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS_PORT = web.AppKey("citadel_metrics_port", int)  # the separate scrape port, once bound
TREE_SAMPLE_INTERVAL = 1.0  # seconds; multiprocess mode only (see gateway.http.metrics)


def error_response(error: GatewayError, request_id: str) -> web.Response:
    response = web.json_response(error.body(), status=error.status, headers=error.headers)
    response.headers["x-request-id"] = request_id
    return response


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return NotFound(
            f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
        )
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.path}.",
            headers={"Allow": allowed} if allowed else None,
        )
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large.")
    error = GatewayError(exc.reason or "HTTP error", code=None)
    error.status = exc.status  # type: ignore[misc]
    return error


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request ids, OpenAI-style errors for everything, and the request's one exit: its
    Exchange, which settles whatever the request acquired and writes its records."""
    exchange = request[EXCHANGE] = Exchange(request)
    # The trace id in every log line of the request (a connection's requests share a task).
    bound = None if exchange.trace is None else bind_contextvars(trace_id=exchange.trace.trace_id)
    try:
        return await _exchange(request, handler, exchange)
    finally:
        if bound is not None:
            reset_contextvars(**bound)


async def _exchange(
    request: web.Request, handler: Handler, exchange: Exchange
) -> web.StreamResponse:
    with exchange:
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = error_response(exc, exchange.request_id)
        except web.HTTPException as exc:
            response = error_response(_from_http_exception(exc, request), exchange.request_id)
        except ConnectionResetError:
            raise  # the client went away: recorded as such (499) by the exit
        except Exception:
            log.exception("request_failed", request_id=exchange.request_id, path=request.path)
            response = error_response(
                InternalError("The server had an error while processing your request."),
                exchange.request_id,
            )
        if not response.prepared:
            response.headers.setdefault("x-request-id", exchange.request_id)
            if request.can_read_body:
                # Refused before its body was read (a missing key, a declared size too
                # large): close rather than read a stranger's body to find the next request.
                response.force_close()
        # A stream that failed after its 200 went out is recorded as what it was.
        exchange.status = exchange.error_status or response.status
        if not response.prepared:
            await _answer(request, response, exchange)
        return response


async def _answer(request: web.Request, response: web.StreamResponse, exchange: Exchange) -> None:
    """Send a whole answer now, inside the exchange, rather than after the handler returns:
    the exchange's exit (settlement, metrics, the access log) then runs once the client has
    its bytes, not while it waits for them. aiohttp, finding the response sent, sends nothing
    more."""
    put_exchange_headers(exchange, request, response)
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        exchange.status = CLIENT_GONE  # the client left before its answer went out


async def metrics_endpoint(request: web.Request) -> web.Response:
    """/metrics on the API port, for the networks the config allows."""
    settings = request.app[STATE].config.metrics
    peer = request.remote or ""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        address = None
    allowed = address is not None and any(
        address in ipaddress.ip_network(network, strict=False) for network in settings.allow
    )
    if not allowed:
        raise NotFound(f"Unknown request URL: GET {request.path}.", code="unknown_url")
    return request.app[STATE].metrics.handler()


async def _actor_tree(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    shared = {config.auth.key_store, config.usage.path if config.usage else None}
    for url in sorted(u for u in shared if u is not None and is_postgres(u)):
        # The schema brought up to date, or the start refused (SchemaTooNew) with the reason.
        applied = await migrate(url)
        if applied:
            log.info("schema_migrated", versions=applied)
    system = ActorSystem()
    sources = config.auth_sources()
    layout = LiveLayout(
        TreeLayout.first(config.router_settings()),
        sources,
        config.auth.key_store,
        config.limits,
        config.usage,
    )
    root = await system.spawn(gateway_tree(layout, system.lookup))
    if not sources.enabled:
        log.warning("auth_disabled", reason="no API keys and no key store configured")
    metrics = GatewayMetrics(root)
    app[STATE] = state = GatewayState(
        config=config,
        system=system,
        root=root,
        router=system.lookup(ROUTER),
        auth=system.lookup(AUTH),
        limiter=system.lookup(LIMITER),
        ledger=system.lookup(LEDGER) if config.usage is not None else None,
        metrics=metrics,
        cache=ResponseCache(config.cache, CacheMetrics(metrics.registry)),
        tracing=_tracing(config, metrics),
        started=int(time.time()),
        streams=OpenStreams(),
        layout=layout,
        config_path=app.get(CONFIG_PATH),
        instance=config.instance or this_process(),
    )
    log.info("actor_tree_started", models=[m.name for m in config.models])
    if state.metrics.sampler is not None:
        state.in_background(_sample_tree(state.metrics.sampler))
    try:
        yield
    finally:
        state.exit_records.flush()  # the last requests' records, while the actors still run
        for task in list(state.background):
            task.cancel()
        if state.cache is not None:
            await state.cache.close()
        if state.tracing is not None:
            await asyncio.to_thread(state.tracing.close)  # exports what is queued
        await system.shutdown()
        log.info("actor_tree_stopped")


def _tracing(config: GatewayConfig, metrics: GatewayMetrics) -> Tracing | None:
    """The OpenTelemetry SDK and its exporter, imported only when tracing is on: they are
    9 MB of every gateway process's memory (docs/benchmarks.md)."""
    if not config.tracing.enabled:
        return None
    from gateway.tracing.provider import Tracing

    return Tracing(config.tracing, metrics.registry)


async def _sample_tree(sampler: TreeSampler) -> None:
    while True:
        sampler.sample()
        await asyncio.sleep(TREE_SAMPLE_INTERVAL)


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """A separate port for scrapers, when configured: /metrics only, no allow-list."""
    listen = app[CONFIG].metrics.listen
    if listen is None:
        yield
        return
    metrics = app[STATE].metrics
    scrape = web.Application()

    async def serve_metrics(request: web.Request) -> web.Response:
        return metrics.handler()

    scrape.router.add_get("/metrics", serve_metrics)
    runner = web.AppRunner(scrape, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    app[METRICS_PORT] = int(runner.addresses[0][1])
    log.info("metrics_listening", listen=listen)
    try:
        yield
    finally:
        await runner.cleanup()


def create_app(config: GatewayConfig, *, config_path: str | None = None) -> web.Application:
    """The gateway app. `config_path` is the file `config` came from, which a reload
    (SIGHUP, POST /admin/reload) reads again."""
    app = web.Application(
        middlewares=[edge_middleware], client_max_size=config.limits.max_body_bytes
    )
    app[CONFIG] = config
    if config_path is not None:
        app[CONFIG_PATH] = config_path
    app.cleanup_ctx.append(_actor_tree)
    app.cleanup_ctx.append(_metrics_listener)
    handlers.add_routes(app)
    health.add_routes(app)
    admin.add_routes(app)
    admin_keys.add_routes(app)
    admin_config.add_routes(app)
    console.add_routes(app)
    admin_usage.add_routes(app)
    openapi.add_routes(app)
    if config.metrics.on_main_port:
        app.router.add_get("/metrics", metrics_endpoint)
    return app
