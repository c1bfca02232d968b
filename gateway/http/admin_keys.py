"""/admin/keys: managing the key store over HTTP (admin key required).

GET    /admin/keys                    every key (never a secret nor its hash)
POST   /admin/keys                    create: scopes as JSON; the answer holds the full key,
                                      shown this once
POST   /admin/keys/{id}/revoke        revoke (also DELETE /admin/keys/{id}); at once here,
                                      within auth.cache_ttl on other gateways sharing the file
POST   /admin/keys/{id}/rotate        a new key with the same scopes; the old one is revoked
"""

from __future__ import annotations

import time

from aiohttp import web
from pydantic import ValidationError

from actors.auth.actor import ForgetKey
from actors.auth.keys import KeyRecord, KeyScopes
from actors.auth.store import CreateKey, KeyNotFound, ListKeys, RevokeKey, RotateKey
from actors.kernel import ActorRef, Ask
from actors.limiter.actor import BudgetSpent
from actors.limiter.local import Subject
from actors.tree import KEYSTORE
from gateway.http.asks import Answer, ask
from gateway.http.auth import authenticate_admin
from gateway.http.body import later_continue, read_body
from gateway.http.errors import InvalidRequest, NotFound
from gateway.http.state import STATE, GatewayState


async def _store(request: web.Request) -> tuple[GatewayState, ActorRef]:
    state = request.app[STATE]
    await authenticate_admin(state, request)
    if state.config.auth.key_store is None:
        raise NotFound(
            "No key store is configured (auth.key_store).", code="key_store_not_configured"
        )
    return state, state.system.lookup(KEYSTORE)


async def _ask(store: ActorRef, message: Ask[Answer]) -> Answer:
    try:
        return await ask(store, message, "key store")
    except KeyNotFound as exc:
        raise NotFound(f"No key with id '{exc.key_id}'.", code="key_not_found") from None


async def list_keys(request: web.Request) -> web.Response:
    """The configured keys (`auth.keys`) and the store's, if there is one."""
    state = request.app[STATE]
    records: list[KeyRecord] = []
    if state.config.auth.key_store is not None:
        _, store = await _store(request)
        records = await _ask(store, ListKeys())
    config_keys = [key.record() for key in state.config.auth.keys]
    keys = []
    for record in (*config_keys, *records):
        shown = record.public()
        if record.scopes.budget is not None and record.revoked_at is None:
            shown["budget"] = await _budget_of(state, record)
        keys.append(shown)
    return web.json_response({"keys": keys})


async def _budget_of(state: GatewayState, record: KeyRecord) -> dict[str, object]:
    """The key's budget in its current period: spent (the limiter's figure, or the
    ledger's), remaining, and when it resets."""
    budget = record.scopes.budget
    assert budget is not None
    period = state.budget_clock.period(budget.period, time.time())
    subject = Subject(f"key:{record.id}", record.scopes.limits, period)
    spent = await ask(state.limiter, BudgetSpent(subject), "rate limiter", timeout=30)
    return {
        **budget.model_dump(),
        "spent": round(spent),
        "remaining": max(0, budget.tokens - round(spent)),
        "resets_at": period.ends_at,
    }


async def create_key(request: web.Request) -> web.Response:
    _, store = await _store(request)
    try:
        scopes = KeyScopes.model_validate_json(await read_body(request) or b"{}")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}", param=where) from None
    if scopes.expired():
        raise InvalidRequest("expires_at: the key would be expired already.", param="expires_at")
    record, key = await _ask(store, CreateKey(scopes))
    return web.json_response({**record.public(), "key": key}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    state, store = await _store(request)
    record = await _ask(store, RevokeKey(request.match_info["key_id"]))
    await ask(state.auth, ForgetKey(record.id), "auth service")
    return web.json_response(record.public())


async def rotate_key(request: web.Request) -> web.Response:
    state, store = await _store(request)
    old_id = request.match_info["key_id"]
    record, key = await _ask(store, RotateKey(old_id))
    await ask(state.auth, ForgetKey(old_id), "auth service")
    return web.json_response({**record.public(), "key": key, "replaces": old_id}, status=201)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", create_key, expect_handler=later_continue)
    app.router.add_post("/admin/keys/{key_id}/revoke", revoke_key)
    app.router.add_delete("/admin/keys/{key_id}", revoke_key)
    app.router.add_post("/admin/keys/{key_id}/rotate", rotate_key)
