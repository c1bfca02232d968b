"""Forwarding one request: leases from the router's candidates in turn, the I/O of each try
in the request's own task, and failover before the first byte.

A BackendActor decided that a try may go to its replica (the lease); everything here runs
concurrently with every other request, on the replica's connection pool. Whatever happens
(success, upstream failure, timeout, the client going away), each lease is released exactly
once with the outcome, so the actor's in-flight count stays exact. Streams are relayed by
gateway.upstream.relay.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import structlog
from aiohttp import web

from actors.backend.actor import AcquireLease, Judge, Lease, Outcome, Release
from actors.kernel import ActorDead, ActorRef, AskTimeout, MailboxFull
from actors.router.actor import AllowRetry, AwaitRoom, QueueFull, RetryEnded, RouteDecision
from gateway.http.errors import (
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.http.state import REQUEST
from gateway.upstream import failures
from gateway.upstream.attempt import (
    FREE_RETRY,
    RETRYABLE,
    Attempt,
    Outgoing,
    UpstreamCall,
    upstream_failure,
)
from gateway.upstream.relay import relay_stream
from gateway.upstream.rewrite import request_body, response_rewriter, with_stream_usage
from gateway.upstream.tokens import usage_of
from gateway.upstream.transcript import Transcript

log = structlog.get_logger("gateway.upstream.proxy")

LEASE_ASK_TIMEOUT = 2.0


async def _lease_from(decision: RouteDecision, start: int) -> tuple[Lease | None, int]:
    """The first lease granted by a candidate from `start` on, in the router's order, and the
    index to continue from."""
    candidates = decision.candidates
    request = AcquireLease(decision.panic)
    for index in range(start, len(candidates)):
        try:
            lease: Lease | None = await candidates[index].ask(request, timeout=LEASE_ASK_TIMEOUT)
        except (ActorDead, AskTimeout, MailboxFull):
            continue  # restarting or swamped: try the next replica
        if lease is not None:
            return lease, index + 1
    return None, len(candidates)


async def forward(
    request: web.Request, decision: RouteDecision, call: UpstreamCall, router: ActorRef
) -> web.StreamResponse:
    """Send the request to the router's candidates in turn until one answers.

    A try that fails before the first byte reached the client, for a reason that is the
    replica's (connect error, reset, timeout, 429 or 5xx), moves on to the next replica, as
    long as the model's retry budget and the request's deadline allow. Errors caused by the
    request itself (an upstream 4xx) are never retried. A failure that may be either's (a
    500, an empty stream: SUSPECT) is tried once more elsewhere, and that second opinion
    decides whom to blame (`_Blame`).
    """
    context = request[REQUEST]
    context.served_model = decision.model
    if decision.rerouted:
        context.route_reason = decision.reason
    deadline = time.monotonic() + decision.deadline
    next_index = 0
    failure: GatewayError | None = None
    retrying = False  # this try is a retry the budget granted: it must hand it back
    blame = _Blame(alone=len(decision.candidates) == 1)
    try:
        for try_number in range(1, decision.max_attempts + 1):
            lease, next_index = await _lease_from(decision, next_index)
            if lease is None and try_number == 1 and decision.saturated:
                lease = await _wait_for_room(decision, router, deadline)
            if lease is None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                lease.ref.notify(Release(lease.lease_id, Outcome.CANCELLED, 0.0))
                failure = UpstreamTimeout(
                    "The request's deadline passed before any model answered."
                )
                break
            context.backend = lease.backend
            context.attempts = try_number
            attempt = Attempt(lease)
            try:
                return await _try(request, attempt, decision, call, remaining)
            except GatewayError as error:
                if attempt.outcome not in RETRYABLE:
                    raise
                failure = error
            finally:
                blame.hear(attempt)
                attempt.release()
                context.upstream_seconds += attempt.upstream_seconds
                if attempt.usage is not None:
                    context.usage = attempt.usage
                    context.usage_estimated = attempt.usage_estimated
                context.relayed_events += attempt.events
                context.error_status = attempt.error_status
                if retrying:
                    router.notify(RetryEnded(decision.model))
                    retrying = False
            if attempt.outcome is Outcome.REJECTED:  # a second replica failed the same way
                raise blame.client_error(failure)
            if blame.settled and attempt.outcome is not Outcome.CANCELLED:
                break  # a request that may be at fault is retried once, no more
            if try_number == decision.max_attempts or next_index >= len(decision.candidates):
                break
            # A replica that is gone (refused, or dropped the connection before answering)
            # gets its requests moved for free; every other retry spends the model's budget.
            if attempt.outcome not in FREE_RETRY:
                if not await router.ask(AllowRetry(decision.model)):
                    log.warning(
                        "retry_budget_exhausted", model=decision.model, backend=lease.backend
                    )
                    break
                retrying = True
            log.info("request_retried", model=decision.model, failed_backend=lease.backend)
    finally:
        if retrying:  # granted, but no try followed
            router.notify(RetryEnded(decision.model))
        blame.close()
    if failure is not None:
        raise failure
    raise ServiceUnavailable(
        f"All replicas of model '{decision.model}' are busy or unavailable. Retry shortly.",
        headers={"Retry-After": "1"},
    )


# Outcomes that are a replica's answer to the request itself, and so an opinion on it.
_OPINIONS = frozenset({Outcome.OK, Outcome.REJECTED, Outcome.SUSPECT})


class _Blame:
    """Whose fault a SUSPECT failure was, decided by the next replica that answers the same
    request: failing it the same way (or rejecting it) blames the request, which then never
    counts against either replica; anything else blames the first replica. A model with one
    replica has no second opinion: its suspects count. One with more, when no second opinion
    comes (the retry budget or the client ran out), forgets them: no client can eject a
    replica by sending what makes it fail."""

    __slots__ = ("_alone", "_suspect", "settled")

    def __init__(self, *, alone: bool) -> None:
        self._alone = alone
        self._suspect: Attempt | None = None
        self.settled = False  # a second opinion was had

    def hear(self, attempt: Attempt) -> None:
        """Learn a finished try's outcome, before it is released (it may change it)."""
        suspect = self._suspect
        if suspect is None:
            if attempt.outcome is Outcome.SUSPECT and not self.settled:
                self._suspect = attempt
            elif attempt.outcome is Outcome.SUSPECT:
                attempt.outcome = Outcome.UPSTREAM_ERROR  # no third opinion is asked
            return
        if attempt.outcome not in _OPINIONS:
            return  # the replica failed on its own account: no opinion on the request
        blamed = attempt.outcome is Outcome.REJECTED or (
            attempt.outcome is Outcome.SUSPECT and attempt.signature == suspect.signature
        )
        _judge(suspect, failed=not blamed)
        if attempt.outcome is Outcome.SUSPECT:
            attempt.outcome = Outcome.REJECTED if blamed else Outcome.UPSTREAM_ERROR
        self._suspect = None
        self.settled = True

    def client_error(self, failure: GatewayError | None) -> GatewayError:
        """What the client gets when a second replica failed its request the same way: the
        error as it was (a 500 stays a 502: which of the two is at fault is a judgement,
        and a bad deploy fails every replica alike), saying what was seen."""
        if failure is None or isinstance(failure, InvalidRequest):
            return failure or InvalidRequest("The model service rejected the request.")
        return type(failure)(
            f"{failure.message} Two replicas failed on this request the same way: the "
            "request itself may be the cause.",
            param=failure.param,
            code=failure.code,
            headers=failure.headers,
        )

    def close(self) -> None:
        if self._suspect is not None and self._alone:
            _judge(self._suspect, failed=True)
        self._suspect = None


def _judge(attempt: Attempt, *, failed: bool) -> None:
    attempt.lease.ref.notify(Judge(attempt.lease.lease_id, failed))


async def _wait_for_room(
    decision: RouteDecision, router: ActorRef, deadline: float
) -> Lease | None:
    """Every replica is full: wait in the model's bounded queue until a request ends, then
    ask again, until the queue timeout or the request's deadline. 503 if the queue is full
    or the wait runs out."""
    limit = min(deadline, time.monotonic() + decision.queue_timeout)
    while (remaining := limit - time.monotonic()) > 0:
        try:
            room: asyncio.Future[None] = await router.ask(AwaitRoom(decision.model))
        except QueueFull:
            raise _busy(decision, "Too many requests are waiting for it.") from None
        try:
            async with asyncio.timeout(remaining):
                await room
        except TimeoutError:
            break
        lease, _ = await _lease_from(decision, 0)
        if lease is not None:
            return lease
    raise _busy(decision, "No replica had room in time.")


def _busy(decision: RouteDecision, detail: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Every replica of model '{decision.model}' is at capacity. {detail} Retry shortly.",
        headers={"Retry-After": "1"},
    )


async def _try(
    request: web.Request,
    attempt: Attempt,
    decision: RouteDecision,
    call: UpstreamCall,
    remaining: float,
) -> web.StreamResponse:
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
        },
        response_headers=response_headers,
    )
    first_byte = min(lease.timeouts.first_byte, remaining)
    if call.stream:
        return await relay_stream(request, attempt, call, decision, out, first_byte)
    timeout = lease.unary_timeout
    if timeout.total is not None and remaining < timeout.total:
        timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=lease.timeouts.connect)
    return await _relay_unary(attempt, call, decision, out, timeout, request[REQUEST].transcript)


async def _relay_unary(
    attempt: Attempt,
    call: UpstreamCall,
    decision: RouteDecision,
    out: Outgoing,
    timeout: aiohttp.ClientTimeout,
    transcript: Transcript | None,
) -> web.Response:
    lease = attempt.lease
    waiting_since = time.perf_counter()
    try:
        async with lease.session.post(
            lease.base_url + call.path, data=out.body, headers=out.headers, timeout=timeout
        ) as up:
            status = up.status
            payload = await up.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        attempt.upstream_seconds += time.perf_counter() - waiting_since
        log.warning("upstream_failed", backend=lease.backend, error=repr(exc))
        raise upstream_failure(exc, attempt) from None
    attempt.upstream_seconds += time.perf_counter() - waiting_since
    rename = (lease.upstream_model, decision.model)
    if status != 200:
        error, attempt.outcome = failures.from_status(status, payload, rename)
        attempt.signature = failures.signature(status, payload)
        log.warning(
            "upstream_error_status", backend=lease.backend, status=status, body=payload[:500]
        )
        raise error
    # An error object announces itself in its first bytes ({"error": / {"object":"error"):
    # a successful answer is never parsed here.
    if not payload.startswith(b"{") or b'error"' in payload[:48]:
        log.warning("upstream_error_body", backend=lease.backend, body=payload[:500])
        error_obj = failures.error_object(payload)
        if error_obj is None:
            attempt.outcome = Outcome.UPSTREAM_ERROR
            raise UpstreamFailed("The model service returned a malformed response.")
        error = failures.from_error_event(error_obj, rename)
        attempt.outcome, attempt.signature = failures.blame_of(error, payload)
        raise error
    attempt.outcome = Outcome.OK
    attempt.usage = usage_of(payload)
    if transcript is not None:
        transcript.keep(payload)
    rewrite = response_rewriter(lease.upstream_model, decision.model)
    return web.Response(
        body=rewrite(payload), content_type="application/json", headers=out.response_headers
    )
