"""The app factory: routes, the edge middleware, and the actor tree's lifetime.

The actor system starts in a cleanup context, so aiohttp tears it down after the server has
stopped taking requests, in reverse order of set-up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from actors.kernel import ActorSystem
from actors.ledger.store import UsageRecord
from actors.tree import AUTH, LEDGER, LIMITER, ROUTER, LiveLayout, TreeLayout, gateway_tree
from gateway.http import admin, admin_keys, admin_usage, handlers, health, openapi
from gateway.http.auth import presented_secrets
from gateway.http.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from gateway.http.limiter import add_rate_headers
from gateway.http.metrics import GatewayMetrics, TreeSampler, status_class
from gateway.http.state import (
    CONFIG,
    CONFIG_PATH,
    REQUEST,
    STATE,
    GatewayState,
    OpenStreams,
    RequestContext,
)
from gateway.process.config import GatewayConfig

log = structlog.get_logger("gateway")
access_log = structlog.get_logger("gateway.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Shaped like a key: never echoed, logged or stored (a client once sent its key as its id).
_KEY_SHAPED = re.compile(r"(?i)^(?:sk|pk|rk)-")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS_PORT = web.AppKey("citadel_metrics_port", int)  # the separate scrape port, once bound
TREE_SAMPLE_INTERVAL = 1.0  # seconds; multiprocess mode only (see gateway.http.metrics)


def request_ids(request: web.Request) -> tuple[str, str]:
    """(the request's id for the client and the logs, the gateway's own UUID). The client's
    X-Request-ID is kept when it is a plain token; the UUID is what backends get (some accept
    nothing else), so no client-chosen id ever reaches a model server unless configured."""
    # Not a secret, only unique: the PRNG is far cheaper than a getrandom() call per request.
    own = str(uuid.UUID(int=random.getrandbits(128), version=4))
    sent = request.headers.get("x-request-id")
    if (
        sent is not None
        and _REQUEST_ID.fullmatch(sent)
        and not _KEY_SHAPED.match(sent)
        and sent not in presented_secrets(request)
    ):
        return sent, own
    return own, own


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
    """Request id, OpenAI-style errors for everything, and one access event per request."""
    request_id, upstream_id = request_ids(request)
    started = time.perf_counter()
    context = RequestContext(request_id, upstream_id, started)
    request[REQUEST] = context
    status = 500
    try:
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = error_response(exc, request_id)
        except web.HTTPException as exc:
            response = error_response(_from_http_exception(exc, request), request_id)
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499  # the client went away
            raise
        except Exception:
            log.exception("request_failed", request_id=request_id, path=request.path)
            response = error_response(
                InternalError("The server had an error while processing your request."),
                request_id,
            )
        if not response.prepared:
            response.headers.setdefault("x-request-id", request_id)
            if request.can_read_body:
                # Refused before its body was read (a missing key, a declared size too
                # large): close rather than read a stranger's body to find the next request.
                response.force_close()
        # A stream that failed after its 200 went out is recorded as what it was.
        status = context.error_status or response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        state = request.app.get(STATE)
        if state is not None:
            resource = request.match_info.route.resource
            endpoint = resource.canonical if resource is not None else "unmatched"
            record(state.metrics, endpoint, context, status, elapsed)
            if state.ledger is not None and context.served_model is not None:
                state.ledger.notify(usage_record(endpoint, context, status, elapsed))
        if (state.config if state is not None else request.app[CONFIG]).logging.access_log:
            access_log.info(
                "request",
                request_id=request_id,
                upstream_request_id=upstream_id if upstream_id != request_id else None,
                method=request.method,
                path=request.path,
                status=status,
                model=context.model,
                served_model=context.served_model,
                backend=context.backend,
                key_id=context.key_id,
                attempts=context.attempts,
                prompt_tokens=context.usage[0] if context.usage else None,
                completion_tokens=context.usage[1] if context.usage else None,
                usage_estimated=context.usage_estimated or None,
                latency_ms=round(elapsed * 1000, 3),
            )


def record(
    metrics: GatewayMetrics,
    endpoint: str,
    context: RequestContext,
    status: int,
    elapsed: float,
) -> None:
    """One request's metrics (`endpoint`: the route template). Labels come from
    configuration and routes, never the client."""
    if status == 401:
        metrics.auth_failures.inc()
    model = context.served_model
    if model is None:
        if endpoint.startswith("/v1/") and endpoint != "/v1/models":
            metrics.requests.labels("-", "-", endpoint, status_class(status)).inc()
        return
    metrics.requests.labels(model, context.backend or "-", endpoint, status_class(status)).inc()
    metrics.duration.labels(model, endpoint).observe(elapsed)
    metrics.overhead.labels(endpoint).observe(max(0.0, elapsed - context.upstream_seconds))
    if context.first_byte_at is not None:
        metrics.ttft.labels(model).observe(context.first_byte_at - context.started)
    if context.attempts > 1:
        metrics.retries.labels(model).inc(context.attempts - 1)
    if context.usage is not None:
        key = context.key_id or "-"
        source = "estimated" if context.usage_estimated else "reported"
        metrics.tokens.labels(model, key, "prompt", source).inc(context.usage[0])
        metrics.tokens.labels(model, key, "completion", source).inc(context.usage[1])
    if context.route_reason is not None:
        kind = context.route_reason.split(":", 1)[0]
        kind = kind if kind in ("context", "fallback") else "virtual"
        metrics.routed.labels(context.model or "-", model, kind).inc()


def usage_record(
    endpoint: str, context: RequestContext, status: int, elapsed: float
) -> UsageRecord:
    prompt, completion = context.usage or (0, 0)
    first = context.first_byte_at
    return UsageRecord(
        ts=time.time(),
        request_id=context.request_id,
        key_id=context.key_id,
        model=context.served_model or "-",
        backend=context.backend,
        endpoint=endpoint,
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=status,
        latency_ms=round(elapsed * 1000, 3),
        ttft_ms=None if first is None else round((first - context.started) * 1000, 3),
        usage_estimated=context.usage_estimated,
    )


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
    app[STATE] = state = GatewayState(
        config=config,
        system=system,
        root=root,
        router=system.lookup(ROUTER),
        auth=system.lookup(AUTH),
        limiter=system.lookup(LIMITER),
        ledger=system.lookup(LEDGER) if config.usage is not None else None,
        metrics=GatewayMetrics(root),
        started=int(time.time()),
        streams=OpenStreams(),
        layout=layout,
        config_path=app.get(CONFIG_PATH),
    )
    log.info("actor_tree_started", models=[m.name for m in config.models])
    if state.metrics.sampler is not None:
        state.in_background(_sample_tree(state.metrics.sampler))
    try:
        yield
    finally:
        for task in list(state.background):
            task.cancel()
        await system.shutdown()
        log.info("actor_tree_stopped")


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
    app.on_response_prepare.append(add_rate_headers)
    if config_path is not None:
        app[CONFIG_PATH] = config_path
    app.cleanup_ctx.append(_actor_tree)
    app.cleanup_ctx.append(_metrics_listener)
    handlers.add_routes(app)
    health.add_routes(app)
    admin.add_routes(app)
    admin_keys.add_routes(app)
    admin_usage.add_routes(app)
    openapi.add_routes(app)
    if config.metrics.on_main_port:
        app.router.add_get("/metrics", metrics_endpoint)
    return app
