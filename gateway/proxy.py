"""The I/O of one request against one leased replica, in the request's own task.

A BackendActor decided that this request may go to its replica (the lease); everything here
runs concurrently with every other request, on the replica's connection pool. Whatever
happens (success, upstream failure, timeout, the client going away), the lease is released
exactly once with the outcome, so the actor's in-flight count stays exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from actors.backend import AcquireLease, Lease, Outcome, Release
from actors.kernel import ActorDead, ActorRef, AskTimeout, MailboxFull
from actors.router import AllowRetry, RetryEnded, RouteDecision
from gateway import sse, upstream_errors
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamFailed, UpstreamTimeout
from gateway.rewrite import request_body, response_rewriter
from gateway.state import REQUEST

log = structlog.get_logger("gateway.proxy")

LEASE_ASK_TIMEOUT = 2.0
# What a failed try says about the replica, when a retry elsewhere may help.
RETRYABLE = frozenset({Outcome.CONNECT_ERROR, Outcome.TIMEOUT, Outcome.UPSTREAM_ERROR})
DRAIN_TIMEOUT = 1.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class ClientGone(Exception):
    """Writing to the client failed: it disconnected."""


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What the handler parsed, for one forwarded request."""

    path: str  # "/v1/chat/completions"
    raw: bytes  # the client's body, forwarded untouched but for "model"
    sent_model: str  # the id or alias the client sent
    stream: bool
    request_id: str


class IdleWatchdog:
    """Ends a stream whose upstream falls silent for `idle` seconds.

    A chunk only stamps the time; one timer per stream re-arms itself when it finds the stream
    was active, so the cost per chunk is an attribute store, not a timer reschedule.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_on_idle", "fired", "last")

    def __init__(self, idle: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._on_idle = on_idle
        self.fired = False
        self.last = self._loop.time()
        self._handle = self._loop.call_at(self.last + idle, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        deadline = self.last + self._idle
        if self._loop.time() >= deadline:
            self.fired = True
            self._on_idle()
        else:
            self._handle = self._loop.call_at(deadline, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class Attempt:
    """One request on one lease: what happened, for the release and the access log."""

    __slots__ = ("lease", "outcome", "started", "ttft")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.outcome = Outcome.CANCELLED
        self.started = time.monotonic()
        self.ttft: float | None = None

    def release(self) -> None:
        latency = time.monotonic() - self.started
        self.lease.ref.notify(Release(self.lease.lease_id, self.outcome, latency, self.ttft))


async def _lease_from(candidates: tuple[ActorRef, ...], start: int) -> tuple[Lease | None, int]:
    """The first lease granted by a candidate from `start` on, in the router's order, and the
    index to continue from."""
    for index in range(start, len(candidates)):
        try:
            lease: Lease | None = await candidates[index].ask(
                AcquireLease(), timeout=LEASE_ASK_TIMEOUT
            )
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
    request itself (an upstream 4xx) are never retried.
    """
    context = request[REQUEST]
    deadline = time.monotonic() + decision.deadline
    next_index = 0
    failure: GatewayError | None = None
    retrying = False  # this try is a retry the budget granted: it must hand it back
    for try_number in range(1, decision.max_attempts + 1):
        lease, next_index = await _lease_from(decision.candidates, next_index)
        if lease is None:
            if retrying:
                router.notify(RetryEnded(decision.model))
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            lease.ref.notify(Release(lease.lease_id, Outcome.CANCELLED, 0.0))
            if retrying:
                router.notify(RetryEnded(decision.model))
            failure = UpstreamTimeout("The request's deadline passed before any model answered.")
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
            attempt.release()
            if retrying:
                router.notify(RetryEnded(decision.model))
                retrying = False
        if try_number == decision.max_attempts or next_index >= len(decision.candidates):
            break
        # A connect failure never reached a model server: trying the next one adds no load
        # to the fleet, so it is free. Everything else spends the model's retry budget.
        if attempt.outcome is not Outcome.CONNECT_ERROR:
            if not await router.ask(AllowRetry(decision.model)):
                log.warning("retry_budget_exhausted", model=decision.model, backend=lease.backend)
                break
            retrying = True
        log.info("request_retried", model=decision.model, failed_backend=lease.backend)
    if failure is not None:
        raise failure
    raise ServiceUnavailable(
        f"All replicas of model '{decision.model}' are busy or unavailable. Retry shortly.",
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
    body = request_body(call.raw, call.sent_model, lease.upstream_model)
    headers = {**lease.headers, "Content-Type": "application/json", "x-request-id": call.request_id}
    response_headers = {
        "x-request-id": call.request_id,
        "x-citadel-model": decision.model,
        "x-citadel-backend": lease.backend,
    }
    first_byte = min(lease.timeouts.first_byte, remaining)
    if call.stream:
        return await _relay_stream(
            request, attempt, call, decision, body, headers, response_headers, first_byte
        )
    timeout = lease.unary_timeout
    if timeout.total is not None and remaining < timeout.total:
        timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=lease.timeouts.connect)
    return await _relay_unary(attempt, call, decision, body, headers, response_headers, timeout)


def _upstream_failure(exc: BaseException, attempt: Attempt) -> GatewayError:
    """Map a client-library exception from talking to the upstream."""
    if isinstance(exc, TimeoutError):
        attempt.outcome = Outcome.TIMEOUT
        return UpstreamTimeout("The model service did not answer in time.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        attempt.outcome = Outcome.CONNECT_ERROR
        return UpstreamFailed("The model service could not be reached.")
    attempt.outcome = Outcome.UPSTREAM_ERROR
    return UpstreamFailed("The connection to the model service failed.")


async def _relay_unary(
    attempt: Attempt,
    call: UpstreamCall,
    decision: RouteDecision,
    body: bytes,
    headers: dict[str, str],
    response_headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
) -> web.Response:
    lease = attempt.lease
    try:
        async with lease.session.post(
            lease.base_url + call.path, data=body, headers=headers, timeout=timeout
        ) as up:
            status = up.status
            payload = await up.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("upstream_failed", backend=lease.backend, error=repr(exc))
        raise _upstream_failure(exc, attempt) from None
    rename = (lease.upstream_model, decision.model)
    if status != 200:
        error, attempt.outcome = upstream_errors.from_status(status, payload, rename)
        log.warning(
            "upstream_error_status", backend=lease.backend, status=status, body=payload[:500]
        )
        raise error
    # An error object announces itself in its first bytes ({"error": / {"object":"error"):
    # a successful answer is never parsed here.
    if not payload.startswith(b"{") or b'error"' in payload[:48]:
        attempt.outcome = Outcome.UPSTREAM_ERROR
        log.warning("upstream_error_body", backend=lease.backend, body=payload[:500])
        error_obj = upstream_errors.error_object(payload)
        if error_obj is not None:
            raise upstream_errors.from_error_event(error_obj, rename)
        raise UpstreamFailed("The model service returned a malformed response.")
    attempt.outcome = Outcome.OK
    rewrite = response_rewriter(lease.upstream_model, decision.model)
    return web.Response(
        body=rewrite(payload), content_type="application/json", headers=response_headers
    )


async def _relay_stream(
    request: web.Request,
    attempt: Attempt,
    call: UpstreamCall,
    decision: RouteDecision,
    body: bytes,
    headers: dict[str, str],
    response_headers: dict[str, str],
    first_byte: float,
) -> web.StreamResponse:
    lease = attempt.lease
    rename = (lease.upstream_model, decision.model)
    framer = sse.EventFramer()
    upstream: aiohttp.ClientResponse | None = None
    clean_end = False
    try:
        # Before the first byte reaches the client, a failure is an ordinary HTTP error.
        try:
            async with asyncio.timeout(first_byte):
                upstream = await lease.session.post(
                    lease.base_url + call.path,
                    data=body,
                    headers={**headers, "Accept": "text/event-stream"},
                    timeout=lease.stream_timeout,
                )
                if upstream.status != 200:
                    payload = await upstream.read()
                    error, attempt.outcome = upstream_errors.from_status(
                        upstream.status, payload, rename
                    )
                    log.warning(
                        "upstream_error_status",
                        backend=lease.backend,
                        status=upstream.status,
                        body=payload[:500],
                    )
                    raise error
                first = b""
                while not first:
                    chunk = await upstream.content.readany()
                    if not chunk:
                        attempt.outcome = Outcome.UPSTREAM_ERROR
                        raise UpstreamFailed("The model service closed the stream before any data.")
                    first = framer.feed(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("upstream_failed", backend=lease.backend, error=repr(exc))
            raise _upstream_failure(exc, attempt) from None
        first_error = sse.find_error(first)
        if first_error is not None:
            attempt.outcome = Outcome.UPSTREAM_ERROR
            log.warning(
                "upstream_stream_error", backend=lease.backend, error=str(first_error)[:500]
            )
            raise upstream_errors.from_error_event(first_error, rename)
        attempt.ttft = time.monotonic() - attempt.started

        response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **response_headers})
        await response.prepare(request)
        rewrite = response_rewriter(lease.upstream_model, decision.model)
        try:
            clean_end = await _pump(response, upstream, framer, first, rewrite, attempt, rename)
            await response.write_eof()
        except ClientGone:
            attempt.outcome = Outcome.CANCELLED
        return response
    finally:
        if upstream is not None:
            if clean_end:
                upstream.release()
            else:
                upstream.close()  # drop the connection: the model server stops generating


async def _pump(
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    framer: sse.EventFramer,
    first: bytes,
    rewrite: Callable[[bytes], bytes],
    attempt: Attempt,
    rename: tuple[str, str],
) -> bool:
    """Relay events until [DONE]. After the first byte, a failure ends the stream with an
    error event, never a silent cut. Returns True if the upstream finished cleanly.

    This loop runs once per upstream read of every stream: it is kept to a few C-level
    byte scans and the write; the rare cases (errors, cuts) leave it.
    """
    read = upstream.content.readany
    write = response.write
    feed = framer.feed
    events = first
    # Closing the upstream response wakes the pending read with an error; `fired` tells
    # that error apart from a real cut.
    watchdog = IdleWatchdog(attempt.lease.timeouts.idle, upstream.close)
    touch = watchdog.touch
    try:
        while True:
            if events:
                # `error"` with a bare quote can only be structural JSON: parse only then.
                if b'error"' in events and (error := sse.find_error(events)) is not None:
                    await _end_with_error(response, attempt, error, rename)
                    return False
                try:
                    await write(rewrite(events))
                except ConnectionResetError as gone:
                    raise ClientGone from gone
                if sse.is_done(events):
                    break
            chunk = await read()
            touch()
            if not chunk:
                if watchdog.fired:
                    raise TimeoutError("idle")
                attempt.outcome = Outcome.UPSTREAM_ERROR
                log.warning("upstream_stream_cut", backend=attempt.lease.backend)
                cut = UpstreamFailed("The model service ended the stream before it was complete.")
                await _write(response, sse.error_event(cut.body()))
                return False
            events = feed(chunk)
    except (TimeoutError, aiohttp.ClientError) as caught:
        reason: BaseException = caught
        if watchdog.fired:
            reason = TimeoutError(f"no data for {attempt.lease.timeouts.idle:g}s")
        failure = _upstream_failure(reason, attempt)
        if isinstance(reason, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            failure = UpstreamFailed("The model service ended the stream before it was complete.")
        log.warning("upstream_stream_failed", backend=attempt.lease.backend, error=repr(reason))
        await _write(response, sse.error_event(failure.body()))
        return False
    finally:
        watchdog.cancel()
    attempt.outcome = Outcome.OK
    # Read to the end of the body (the chunked terminator, normally already here) so the
    # connection can be reused; an upstream that lingers after [DONE] just loses it.
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            while await read():
                pass
    except (TimeoutError, aiohttp.ClientError):
        return False
    return True


async def _end_with_error(
    response: web.StreamResponse,
    attempt: Attempt,
    error: dict[str, object],
    rename: tuple[str, str],
) -> None:
    attempt.outcome = Outcome.UPSTREAM_ERROR
    log.warning("upstream_stream_error", backend=attempt.lease.backend, error=str(error)[:500])
    failure = upstream_errors.from_error_event(error, rename)
    await _write(response, sse.error_event(failure.body()))


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError as exc:
        raise ClientGone from exc
