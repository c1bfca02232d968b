"""Liveness and readiness, unauthenticated and cheap, for load balancers and systemd."""

from __future__ import annotations

from aiohttp import web

from actors.kernel import ActorState
from actors.router.actor import ModelAvailability
from gateway.http.asks import ask
from gateway.http.errors import ServiceUnavailable
from gateway.http.state import STATE


async def live(request: web.Request) -> web.Response:
    """The process is up and its event loop answers."""
    return web.json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    """The actor tree is running and every configured model has a usable replica (healthy,
    circuit not open); otherwise 503 with the reason."""
    state = request.app[STATE]
    root = state.root.snapshot()
    problems = [
        f"actor {node.path} is {node.state.value}"
        for node in (root, *root.children)
        if node.state is not ActorState.RUNNING
    ]
    models: dict[str, dict[str, int]] = {}
    try:
        availability = await ask(state.router, ModelAvailability(), "router", timeout=1.0)
    except ServiceUnavailable:
        availability = {}
        problems.append("the router is not answering")
    for model, (usable, total) in availability.items():
        models[model] = {"usable_replicas": usable, "replicas": total}
        if usable == 0:
            problems.append(f"model {model} has no usable replica")
    if problems:
        body = {"status": "not_ready", "reasons": problems, "models": models}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready", "models": models})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
