"""GET /admin/usage: tokens and requests from the usage ledger, summarised (admin key).

Query: `by` (comma-separated: key, model, day; default key,model), `since` and `until`
(unix seconds), or `hours` (the last N hours). Records still waiting in memory are written
first, so the answer includes every request that has completed.
"""

from __future__ import annotations

import math
import time
from typing import get_args

from aiohttp import web

from actors.ledger.store import Group, Summarize
from gateway.http.asks import ask
from gateway.http.auth import authenticate_admin
from gateway.http.errors import InvalidRequest, NotFound
from gateway.http.state import STATE

GROUP_NAMES: tuple[str, ...] = get_args(Group)


def parse_groups(text: str) -> tuple[Group, ...]:
    groups = tuple(part.strip() for part in text.split(",") if part.strip())
    for group in groups:
        if group not in GROUP_NAMES:
            raise ValueError(f"cannot group by {group!r}: use {', '.join(GROUP_NAMES)}")
    return groups  # type: ignore[return-value]


def _number(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    # nan, inf and 1e400 would make the answer invalid JSON (NaN, Infinity).
    if not math.isfinite(number) or not 0 <= number <= 1e11:
        raise InvalidRequest(f"'{name}' must be a number from 0 to 1e11.", param=name)
    return number


async def usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await authenticate_admin(state, request)
    try:
        by = parse_groups(request.query.get("by", "key,model"))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="by") from None
    since, until, hours = (
        _number(request, "since"),
        _number(request, "until"),
        _number(request, "hours"),
    )
    if state.ledger is None:
        raise NotFound("No usage ledger is configured (usage.path).", code="ledger_not_configured")
    if hours is not None:
        since = time.time() - hours * 3600
    # Deferred: answered once every record received so far has been written.
    rows = await ask(state.ledger, Summarize(by, since, until), "ledger")
    return web.json_response({"by": list(by), "since": since, "until": until, "usage": rows})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/usage", usage)
