"""GET /admin/config: the configuration in force, for people (the console) and scripts, with
every secret taken out: plain keys, key hashes, upstream tokens, export headers, and the
passwords in database and Redis URLs."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gateway.http.auth import authenticate_admin
from gateway.http.state import STATE

REDACTED = "[redacted]"
# Fields whose values are secrets wherever they appear in the configuration.
_SECRET_FIELDS = frozenset({"api_keys", "admin_keys", "secret_sha256", "api_key", "headers"})
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):[^@/]*@", re.I)


def redacted(value: Any, field: str | None = None) -> Any:
    """`value` with every secret replaced (a list of secrets by its length)."""
    if field in _SECRET_FIELDS and value:
        if isinstance(value, list | tuple):
            return [REDACTED] * len(value)
        if isinstance(value, dict):
            return dict.fromkeys(value, REDACTED)
        return REDACTED
    if isinstance(value, dict):
        return {key: redacted(item, key) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    if isinstance(value, str) and "@" in value:
        return _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{REDACTED}@", value)
    return value


async def config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await authenticate_admin(state, request)
    shown = redacted(state.config.model_dump(mode="json"))
    return web.json_response({"config": shown, "config_path": state.config_path})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/config", config)
