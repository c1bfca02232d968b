"""The operators' API under /admin: the live actor tree, the replicas, restarts, reloads.

Every endpoint needs an admin key (`auth.admin_keys`); a model key gets 403.
"""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from actors.kernel import ActorSnapshot, RestartChild
from gateway.http.asks import ask
from gateway.http.auth import authenticate_admin
from gateway.http.errors import InvalidRequest, NotFound
from gateway.http.state import STATE
from gateway.process.reload import ReloadRejected, reload_from_file


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


async def actors(request: web.Request) -> web.Response:
    """The supervision tree: every actor's state, mailbox, messages, restarts, last failure."""
    state = request.app[STATE]
    await authenticate_admin(state, request)
    tree = [node.to_dict() for node in state.system.snapshot()]
    if _wants_html(request):
        rows = "".join(_rows(snapshot, 0) for snapshot in state.system.snapshot())
        return web.Response(text=_PAGE.format(rows=rows), content_type="text/html")
    return web.json_response({"actors": tree})


async def restart_actor(request: web.Request) -> web.Response:
    """Restart one actor through its supervisor (not counted against restart intensity)."""
    state = request.app[STATE]
    await authenticate_admin(state, request)
    path = request.match_info["path"]
    parent_path, _, name = path.rpartition("/")
    if not parent_path:
        raise InvalidRequest("A top-level actor has no supervisor to restart it.", param="path")
    try:
        parent = state.system.lookup(parent_path)
        state.system.lookup(path)
    except LookupError:
        raise NotFound(f"No actor at '{path}'.", code="actor_not_found") from None
    await ask(parent, RestartChild(name), "supervisor")
    return web.json_response(
        {"restarted": path, "actor": state.system.lookup(path).snapshot().to_dict()}
    )


async def backends(request: web.Request) -> web.Response:
    """Each replica: health, circuit, in flight, latency estimate, queue, served and failed."""
    state = request.app[STATE]
    await authenticate_admin(state, request)
    replicas: list[dict[str, Any]] = []
    root = state.root.snapshot()
    group = root.find("root/backends")
    for node in group.children if group is not None else ():
        replicas.append({"name": node.name, "state": node.state.value, **node.details})
    return web.json_response({"backends": replicas})


def _rows(node: ActorSnapshot, depth: int) -> str:
    failure = node.last_failure
    last = "" if failure is None else f"{failure.type}: {failure.message}"
    cells = (
        f'<td style="padding-left:{depth * 1.5 + 0.5}em">{html.escape(node.name)}</td>'
        f"<td>{html.escape(node.actor_class)}</td><td>{node.state.value}</td>"
        f"<td>{node.mailbox_depth}/{node.mailbox_capacity}</td><td>{node.messages_handled}</td>"
        f"<td>{node.restarts}</td><td>{html.escape(last)}</td><td>{node.uptime_s:.0f}</td>"
    )
    row = f'<tr class="{node.state.value}">{cells}</tr>'
    return row + "".join(_rows(child, depth + 1) for child in node.children)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>citadel-gateway: actors</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; }}
tr.failed td, tr.restarting td {{ background: #fde8e8; }}
tr.stopped td {{ color: #888; }}
</style></head>
<body><h1>Actors</h1>
<table><tr><th>actor</th><th>class</th><th>state</th><th>mailbox</th><th>handled</th>
<th>restarts</th><th>last failure</th><th>uptime (s)</th></tr>
{rows}
</table></body></html>
"""


async def reload_config(request: web.Request) -> web.Response:
    """Re-read the configuration file and apply it (the same as SIGHUP). 400 with the
    reason when the file is invalid; the running configuration then stays."""
    state = request.app[STATE]
    await authenticate_admin(state, request)
    try:
        report = await reload_from_file(state)
    except ReloadRejected as exc:
        raise InvalidRequest(f"Configuration not reloaded: {exc}", code="invalid_config") from None
    return web.json_response(report.as_dict())


async def cache(request: web.Request) -> web.Response:
    """The response cache: its backend, whether its store answers, what this process holds
    (memory), and each model's policy."""
    state = request.app[STATE]
    await authenticate_admin(state, request)
    view: dict[str, object] = state.cache.describe() if state.cache is not None else {}
    view["models"] = {
        name: policy.model_dump(mode="json") for name, policy in state.cache_policies.items()
    }
    return web.json_response(view)


async def guardrails(request: web.Request) -> web.Response:
    """The guardrail policies in force, and which models apply which."""
    state = request.app[STATE]
    await authenticate_admin(state, request)
    config = state.config
    return web.json_response(
        {
            "policies": [policy.model_dump(mode="json") for policy in config.guardrails],
            "models": {m.name: list(m.guardrails) for m in config.models if m.guardrails},
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/actors", actors)
    app.router.add_post("/admin/actors/{path:.+}/restart", restart_actor)
    app.router.add_get("/admin/backends", backends)
    app.router.add_get("/admin/cache", cache)
    app.router.add_get("/admin/guardrails", guardrails)
    app.router.add_post("/admin/reload", reload_config)
