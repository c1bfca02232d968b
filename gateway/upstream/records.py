"""What a request's one exit writes (gateway.upstream.exchange): its metrics, the output
guardrails' findings, and its usage record for the ledger. Labels come from configuration and
routes, never the client."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from actors.ledger.store import UsageRecord
from gateway.guardrails.engine import Findings
from gateway.http.metrics import GatewayMetrics, status_class

if TYPE_CHECKING:
    from gateway.upstream.exchange import Exchange

guardrails_log = structlog.get_logger("gateway.guardrails")


def report_output(metrics: GatewayMetrics, exchange: Exchange, findings: Findings) -> None:
    """The output rules that fired on the answer: counted, logged (their ids, never what
    they matched) and added to the request's, for the access log and the ledger."""
    model, hits = exchange.served_model or "-", metrics.guardrail_hits
    for compiled in findings.fired.values():
        hits.labels(compiled.rule.id, "output", compiled.rule.action, model).inc()
    ids = findings.ids
    exchange.guardrails = (*exchange.guardrails, *(i for i in ids if i not in exchange.guardrails))
    guardrails_log.info(
        "guardrail_fired",
        rules=list(ids),
        direction="output",
        action="block" if findings.blocked is not None else None,
    )


def record_metrics(
    metrics: GatewayMetrics, endpoint: str, exchange: Exchange, elapsed: float
) -> None:
    """One request's metrics (`endpoint`: the route template). Labels come from
    configuration and routes, never the client."""
    status = exchange.status
    if status == 401:
        metrics.auth_failures.inc()
    model = exchange.served_model
    if model is None:
        if endpoint.startswith("/v1/") and endpoint != "/v1/models":
            metrics.requests.labels("-", "-", endpoint, status_class(status)).inc()
        return
    metrics.requests.labels(model, exchange.backend or "-", endpoint, status_class(status)).inc()
    metrics.duration.labels(model, endpoint).observe(elapsed)
    metrics.overhead.labels(endpoint).observe(max(0.0, elapsed - exchange.upstream_seconds))
    if exchange.first_byte_at is not None:
        metrics.ttft.labels(model).observe(exchange.first_byte_at - exchange.started)
    if exchange.attempts > 1:
        metrics.retries.labels(model).inc(exchange.attempts - 1)
    if exchange.usage is not None and exchange.cached_tokens is None:
        key = exchange.key_id or "-"
        source = "estimated" if exchange.usage_estimated else "reported"
        metrics.tokens.labels(model, key, "prompt", source).inc(exchange.usage[0])
        metrics.tokens.labels(model, key, "completion", source).inc(exchange.usage[1])
    if exchange.route_reason is not None:
        kind = exchange.route_reason.split(":", 1)[0]
        kind = kind if kind in ("context", "fallback") else "virtual"
        metrics.routed.labels(exchange.model or "-", model, kind).inc()


def usage_record(endpoint: str, exchange: Exchange, elapsed: float, instance: str) -> UsageRecord:
    prompt, completion = exchange.usage or (0, 0)
    first = exchange.first_byte_at
    return UsageRecord(
        ts=time.time(),
        request_id=exchange.request_id,
        key_id=exchange.key_id,
        model=exchange.served_model or "-",
        backend=exchange.backend,
        endpoint=endpoint,
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=exchange.status,
        latency_ms=round(elapsed * 1000, 3),
        ttft_ms=None if first is None else round((first - exchange.started) * 1000, 3),
        usage_estimated=exchange.usage_estimated,
        cached=exchange.cached_tokens is not None,
        saved_tokens=sum(exchange.cached_tokens) if exchange.cached_tokens else 0,
        guardrails=",".join(exchange.guardrails) or None,
        record_id=exchange.upstream_id,
        instance=instance,
    )
