"""Forwarding one request: leases from the router's candidates in turn, the I/O of each try
in the request's own task, and failover before the first byte.

Layered like httpx's send, one concern a step:

    forward       the tries: which replica next, whether a failure earns another try
    _send         one try: the body and headers for its replica, unary or stream
    _relay_unary  a JSON answer, read whole and rewritten (streams: gateway.upstream.relay)

A BackendActor decided that a try may go to its replica (the lease); everything here runs
concurrently with every other request, on the replica's connection pool. The Exchange
records each lease and gives it back (gateway.upstream.exchange): nothing here releases,
settles or records anything itself.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from actors.backend.actor import AcquireLease, Lease, Outcome
from actors.backend.pool import UpstreamClientError
from actors.router.actor import AwaitRoom, QueueFull, RouteDecision
from gateway.guardrails.answers import check_answer
from gateway.http.asks import ask
from gateway.http.errors import (
    GatewayError,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.upstream import failures
from gateway.upstream.attempt import (
    FREE_RETRY,
    RETRYABLE,
    Attempt,
    Outgoing,
    open_upstream,
)
from gateway.upstream.exchange import Exchange
from gateway.upstream.relay import relay_stream
from gateway.upstream.rewrite import request_body, response_rewriter, with_stream_usage
from gateway.upstream.tokens import usage_of

log = structlog.get_logger("gateway.upstream.forward")


async def forward(request: web.Request, exchange: Exchange) -> web.StreamResponse:
    """Send the request to the router's candidates in turn until one answers.

    A try that fails before the first byte reached the client, for a reason that is the
    replica's (connect error, reset, timeout, 429 or 5xx), moves on to the next replica, as
    long as the model's retry budget and the request's deadline allow. Errors caused by the
    request itself (an upstream 4xx) are never retried. A failure that may be either's (a
    500, an empty stream: SUSPECT) is tried once more elsewhere, and that second opinion
    decides whom to blame (gateway.upstream.blame).
    """
    decision, _ = exchange.route
    blame = exchange.blame
    deadline = time.monotonic() + decision.deadline
    candidates = _Candidates(decision)
    failure: GatewayError | None = None
    for try_number in range(1, decision.max_attempts + 1):
        lease = await candidates.next_lease()
        if lease is None and try_number == 1 and decision.saturated:
            lease = await _wait_for_room(exchange, candidates, deadline)
        if lease is None:
            break
        attempt = exchange.begin_try(lease)
        try:
            return await _send(request, exchange, attempt, deadline - time.monotonic())
        except GatewayError as error:
            if attempt.outcome not in RETRYABLE:
                raise
            failure = error
        finally:
            exchange.end_try()  # its verdict may make the outcome REJECTED
        if attempt.outcome is Outcome.REJECTED:  # a second replica failed the same way
            raise blame.client_error(failure)
        if blame.settled and attempt.outcome is not Outcome.CANCELLED:
            break  # a request that may be at fault is retried once, no more
        if try_number == decision.max_attempts or candidates.exhausted:
            break
        # A replica that is gone (refused, or dropped the connection before answering)
        # gets its requests moved for free; every other retry spends the model's budget.
        if attempt.outcome not in FREE_RETRY and not await exchange.grant_retry():
            log.warning("retry_budget_exhausted", model=decision.model, backend=lease.backend)
            break
        log.info("request_retried", model=decision.model, failed_backend=lease.backend)
    if failure is not None:
        raise failure
    raise ServiceUnavailable(
        f"All replicas of model '{decision.model}' are busy or unavailable. Retry shortly.",
        headers={"Retry-After": "1"},
    )


class _Candidates:
    """The router's candidates, asked for a lease in its order, each at most once."""

    __slots__ = ("_decision", "_next")

    def __init__(self, decision: RouteDecision) -> None:
        self._decision = decision
        self._next = 0

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._decision.candidates)

    async def next_lease(self, *, again: bool = False) -> Lease | None:
        """The first lease a candidate not yet asked grants (`again`: asking every candidate
        once more, after a wait for room)."""
        candidates = self._decision.candidates
        message = AcquireLease(self._decision.panic)
        start = 0 if again else self._next
        for index in range(start, len(candidates)):
            if not again:
                self._next = index + 1
            try:
                lease = await ask(candidates[index], message, "replica")
            except ServiceUnavailable:
                continue  # restarting or swamped: try the next replica
            if lease is not None:
                return lease
        return None


async def _wait_for_room(
    exchange: Exchange, candidates: _Candidates, deadline: float
) -> Lease | None:
    """Every replica is full: wait in the model's bounded queue until a request ends, then
    ask again, until the queue timeout or the request's deadline. 503 if the queue is full
    or the wait runs out."""
    decision, _ = exchange.route
    limit = min(deadline, time.monotonic() + decision.queue_timeout)
    router = exchange.state.router
    while (remaining := limit - time.monotonic()) > 0:
        try:
            # A deferred reply: answered when a request for the model ends.
            await ask(router, AwaitRoom(decision.model), "router", timeout=remaining)
        except QueueFull:
            raise _busy(decision, "Too many requests are waiting for it.") from None
        except ServiceUnavailable:
            break  # no room in time (or the router restarted: its queue is gone)
        lease = await candidates.next_lease(again=True)
        if lease is not None:
            return lease
    raise _busy(decision, "No replica had room in time.")


def _busy(decision: RouteDecision, detail: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Every replica of model '{decision.model}' is at capacity. {detail} Retry shortly.",
        headers={"Retry-After": "1"},
    )


async def _send(
    request: web.Request, exchange: Exchange, attempt: Attempt, remaining: float
) -> web.StreamResponse:
    """One try: the client's body for this replica, and its answer relayed."""
    if remaining <= 0:
        raise UpstreamTimeout("The request's deadline passed before any model answered.")
    decision, call = exchange.route
    lease = attempt.lease
    response_headers = {
        "x-request-id": call.request_id,
        "x-citadel-model": decision.model,
        "x-citadel-backend": lease.backend,
    }
    if decision.rerouted:
        response_headers["x-citadel-route"] = decision.reason
    profile = lease.profile
    # The gateway asks for a stream's usage report (for limits and the ledger) from servers
    # that send one; from the others it counts the tokens itself (gateway.upstream.relay).
    raw = with_stream_usage(call.raw) if call.hide_usage and profile.stream_usage else call.raw
    out = Outgoing(
        body=request_body(raw, call.sent_model, lease.upstream_model),
        headers={
            **lease.headers,
            "Content-Type": "application/json",
            **call.request_id_header(profile.request_id),
            **(exchange.trace.upstream_headers() if exchange.trace is not None else {}),
        },
        response_headers=response_headers,
    )
    if call.stream:
        first_byte = min(lease.timeouts.first_byte, remaining)
        return await relay_stream(request, exchange, attempt, out, first_byte)
    timeout = min(lease.unary_timeout, remaining)
    return await _relay_unary(exchange, attempt, out, timeout)


async def _relay_unary(
    exchange: Exchange, attempt: Attempt, out: Outgoing, timeout: float
) -> web.Response:
    decision, call = exchange.route
    lease = attempt.lease
    rename = (lease.upstream_model, decision.model)
    upstream = await open_upstream(attempt, call, out, timeout, rename, stream=False)
    waiting_since = time.perf_counter()
    try:
        payload = await upstream.read()
    except (TimeoutError, UpstreamClientError) as exc:
        raise attempt.lost(exc) from None
    finally:
        attempt.upstream_seconds += time.perf_counter() - waiting_since
        upstream.release()
    # An error object announces itself in its first bytes ({"error": / {"object":"error"):
    # a successful answer is never parsed here.
    if not payload.startswith(b"{") or b'error"' in payload[:48]:
        log.warning("upstream_error_body", backend=lease.backend, body=payload[:500])
        error_obj = failures.error_object(payload)
        if error_obj is None:
            malformed = UpstreamFailed("The model service returned a malformed response.")
            raise attempt.fail(malformed, Outcome.UPSTREAM_ERROR)
        error = failures.from_error_event(error_obj, rename)
        raise attempt.fail(error, *failures.blame_of(error, payload))
    attempt.outcome = Outcome.OK
    attempt.usage = usage_of(payload)
    if exchange.guard is not None:
        verdict = check_answer(payload, exchange.guard.output)
        exchange.output_findings = verdict.findings  # reported at the exit
        payload = verdict.body if verdict.body is not None else payload
    if exchange.transcript is not None:
        exchange.transcript.keep(payload)
    rewrite = response_rewriter(lease.upstream_model, decision.model)
    return web.Response(
        body=rewrite(payload), content_type="application/json", headers=out.response_headers
    )
