"""Guardrails at the edge: the served model's input rules over the request, after routing
and before the cache (a redacted request is cached as what the model saw)."""

from __future__ import annotations

import dataclasses

import structlog

from gateway.guardrails.engine import Blocked, CompiledRule, check_input
from gateway.http.errors import InvalidRequest
from gateway.http.state import GatewayState
from gateway.upstream.attempt import UpstreamCall
from gateway.upstream.exchange import Exchange

log = structlog.get_logger("gateway.guardrails")


def guard_input(
    state: GatewayState, exchange: Exchange, model: str, rules: tuple[CompiledRule, ...]
) -> None:
    """Apply `rules` to the routed request: 400 on a block rule; a redacted body replaces the
    call's. Rule ids are counted and logged, never what they matched."""
    _, call = exchange.route
    hits = state.metrics.guardrail_hits
    try:
        verdict = check_input(call.raw, rules)
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
