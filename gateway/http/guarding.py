"""Guardrails at the edge: the served model's guard (with the key's own policies) over the
routed request, after routing and before the cache (a redacted request is cached as what the
model saw); its output rules are left on the exchange for the answer (gateway.upstream.forward
and relay apply them; the exchange's exit counts what they found). Rule ids are counted and
logged, never what they matched."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import structlog

from gateway.guardrails.engine import Blocked, Guard, check_input, guard_of
from gateway.guardrails.limits import over_limit
from gateway.http.errors import InvalidRequest, PermissionDenied
from gateway.http.state import GatewayState
from gateway.upstream.attempt import UpstreamCall
from gateway.upstream.exchange import Exchange

log = structlog.get_logger("gateway.guardrails")


def guard_request(
    state: GatewayState, exchange: Exchange, model: str, key_policies: tuple[str, ...]
) -> dict[str, Any]:
    """Apply the served model's input limits and rules, and the key's own policies', to the
    routed request: 400 over a limit or on a block rule; a redacted body replaces the call's.
    The output rules are left on the exchange for the answer. Returns the request's JSON as
    it goes upstream, parsed once here for the cache too."""
    guard = _with_key_policies(state, model, key_policies) if key_policies else state.guards[model]
    if exchange.transcript is not None:  # before a refusal: its prompt is logged too
        exchange.transcript.rules = (*guard.input, *guard.output)
    _, call = exchange.route
    parsed = json.loads(call.raw)  # validated as a JSON object at the edge
    body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    if guard.limits.any:
        _check_limits(state, exchange, model, guard, body)
    if guard.input:
        _apply_rules(state, exchange, model, guard, body)
    if guard.output and call.path != "/v1/embeddings":  # an answer with texts
        exchange.guard = guard
    return body


def _with_key_policies(state: GatewayState, model: str, key_policies: tuple[str, ...]) -> Guard:
    """The model's guard with the key's policies added (compiled once per pair, until the
    next reload). A key naming a policy the configuration lacks is refused: its policy
    cannot be enforced, so nothing is sent."""
    found = state.key_guards.get((model, key_policies))
    if found is not None:
        return found
    config = state.config
    known = {policy.name for policy in config.guardrails}
    missing = [name for name in key_policies if name not in known]
    if missing:
        raise PermissionDenied(
            f"This API key's guardrail policy {missing[0]!r} is not configured on the gateway.",
            code="guardrail_policy_missing",
        )
    names = (*next(m.guardrails for m in config.models if m.name == model), *key_policies)
    found = state.key_guards[(model, key_policies)] = guard_of(
        config.guardrails, names, state.presidio
    )
    return found


def _check_limits(
    state: GatewayState, exchange: Exchange, model: str, guard: Guard, body: dict[str, Any]
) -> None:
    _, call = exchange.route
    broken = over_limit(body, call.prompt_estimate, guard.limits)
    if broken is None:
        return
    rule_id = f"limits.{broken.kind}"
    exchange.guardrails = (rule_id,)
    state.metrics.guardrail_hits.labels(rule_id, "input", "block", model).inc()
    log.info("guardrail_fired", rules=[rule_id], direction="input", action="block")
    raise InvalidRequest(broken.message, param=broken.param, code="content_policy_violation")


def _apply_rules(
    state: GatewayState, exchange: Exchange, model: str, guard: Guard, body: dict[str, Any]
) -> None:
    _, call = exchange.route
    hits = state.metrics.guardrail_hits
    try:
        verdict = check_input(body, guard.input)
    except Blocked as blocked:
        exchange.guardrails = (blocked.rule_id,)
        hits.labels(blocked.rule_id, "input", "block", model).inc()
        log.info("guardrail_fired", rules=[blocked.rule_id], direction="input", action="block")
        raise InvalidRequest(
            f"The request was refused by the gateway's content policy (rule {blocked.rule_id}).",
            param=call.prompt_param,
            code="content_policy_violation",
        ) from None
    if not verdict.fired:
        return
    exchange.guardrails = tuple(compiled.rule.id for compiled in verdict.fired)
    for compiled in verdict.fired:
        hits.labels(compiled.rule.id, "input", compiled.rule.action, model).inc()
    log.info("guardrail_fired", rules=list(exchange.guardrails), direction="input")
    if verdict.body is not None:
        rewritten: UpstreamCall = dataclasses.replace(call, raw=verdict.body)
        exchange.call = rewritten
