"""Relaying a stream: SSE events from the upstream to the client, one by one as they arrive.

Before the first event reaches the client, a failure is an ordinary HTTP error (and the
request may be retried on another replica); after it, the stream ends with an OpenAI error
event, never a silent cut. A client that leaves closes the upstream connection, so the model
server stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from actors.backend.actor import Outcome
from actors.backend.pool import ConnectionLost, UpstreamClientError, UpstreamResponse
from gateway.guardrails.answers import StreamGuard
from gateway.http.errors import (
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.http.state import STATE
from gateway.upstream import failures, sse
from gateway.upstream.attempt import Attempt, Outgoing, connection_failure, open_upstream
from gateway.upstream.exchange import CLIENT_GONE, Exchange
from gateway.upstream.headers import put_exchange_headers
from gateway.upstream.rewrite import response_rewriter
from gateway.upstream.tokens import StreamTally, usage_of
from gateway.upstream.watchdog import IdleWatchdog, StreamStop

log = structlog.get_logger("gateway.upstream.relay")

DRAIN_TIMEOUT = 1.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class ClientGone(Exception):
    """Writing to the client failed: it disconnected."""


async def relay_stream(
    request: web.Request,
    exchange: Exchange,
    attempt: Attempt,
    out: Outgoing,
    first_byte: float,
) -> web.StreamResponse:
    decision, call = exchange.route
    lease = attempt.lease
    rename = (lease.upstream_model, decision.model)
    framer = sse.EventFramer()
    upstream: UpstreamResponse | None = None
    clean_end = False
    try:
        # Before the first byte reaches the client, a failure is an ordinary HTTP error.
        try:
            async with asyncio.timeout(first_byte):
                upstream = await open_upstream(
                    attempt, call, out, lease.stream_timeout, rename, stream=True
                )
                waiting_since = time.perf_counter()
                try:
                    first = b""
                    while not first:
                        chunk = await upstream.readany()
                        if not chunk:
                            raise _empty_stream(exchange, attempt)
                        first = framer.feed(chunk)
                finally:
                    attempt.upstream_seconds += time.perf_counter() - waiting_since
        except (TimeoutError, UpstreamClientError) as exc:
            raise attempt.lost(exc) from None
        first_error = sse.find_error(first)
        if first_error is not None:
            log.warning(
                "upstream_stream_error", backend=lease.backend, error=str(first_error)[:500]
            )
            error = failures.from_error_event(first_error, rename)
            raise attempt.fail(error, *failures.blame_of(error, first))
        attempt.ttft = time.monotonic() - attempt.started

        response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **out.response_headers})
        put_exchange_headers(exchange, request, response)
        await response.prepare(request)
        exchange.first_byte_at = time.perf_counter()
        if exchange.trace is not None:
            exchange.trace.first_token()
        try:
            clean_end = await _pump(request, exchange, attempt, response, upstream, framer, first)
        except ClientGone:
            attempt.outcome = Outcome.CANCELLED
            attempt.error_status = CLIENT_GONE
            return response
        # The SDKs close the connection right after [DONE]: that stream was delivered in full.
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
    finally:
        if upstream is not None:
            if clean_end:
                upstream.release()
            else:
                upstream.close()  # drop the connection: the model server stops generating


def _empty_stream(exchange: Exchange, attempt: Attempt) -> GatewayError:
    """A 200 stream that ended before its first event. llama-cpp-python answers a prompt
    over its context window this way: when the prompt's estimate is near the window, that is
    what it was (the request's fault); otherwise it may be either's, so a second replica
    decides (gateway.upstream.blame)."""
    decision, call = exchange.route
    log.warning("upstream_stream_empty", backend=attempt.lease.backend)
    window = decision.context_window
    if call.prompt_estimate * 2 >= window:
        too_long = InvalidRequest(
            f"The model service returned nothing for a prompt of about {call.prompt_estimate} "
            f"tokens: it likely exceeds the model's maximum context length of {window} tokens. "
            "Please reduce the length of the prompt.",
            param=call.prompt_param,
            code=failures.CONTEXT_LENGTH_EXCEEDED,
        )
        return attempt.fail(too_long, Outcome.REJECTED)
    empty = UpstreamFailed("The model service ended the stream before sending anything.")
    return attempt.fail(empty, Outcome.SUSPECT, failures.signature(200, b""))


async def _pump(
    request: web.Request,
    exchange: Exchange,
    attempt: Attempt,
    response: web.StreamResponse,
    upstream: UpstreamResponse,
    framer: sse.EventFramer,
    first: bytes,
) -> bool:
    """Relay events until [DONE]. After the first byte, a failure ends the stream with an
    error event, never a silent cut. Returns True if the upstream finished cleanly.

    This loop runs once per upstream read of every stream: it is kept to a few C-level
    byte scans and the write; the rare cases (errors, cuts, the end) leave it.
    """
    decision, call = exchange.route
    rewrite = _rewriter(attempt.lease.upstream_model, decision.model, hide_usage=call.hide_usage)
    tally = StreamTally(call, decision.model)
    read = upstream.readany
    write = response.write
    perf_counter = time.perf_counter
    feed = framer.feed
    count = tally.count
    drained = False
    events = first
    state = exchange.state
    transcript = exchange.transcript
    capture = exchange.capture
    rename = (attempt.lease.upstream_model, decision.model)
    stopper = StreamStop(upstream.close)
    idle = attempt.lease.timeouts.idle
    watchdog = IdleWatchdog(
        idle,
        lambda: stopper.stop(
            UpstreamTimeout("The model service did not answer in time."), Outcome.TIMEOUT
        ),
    )
    touch = watchdog.touch
    guard = None
    if exchange.guard is not None:
        guard = StreamGuard(exchange.guard.output)
        exchange.output_findings = guard.findings  # reported at the exit
    token = state.streams.add(
        lambda: stopper.stop(
            ServiceUnavailable("The gateway is shutting down. Retry the request."),
            Outcome.CANCELLED,
        )
    )
    try:
        while True:
            if events:
                # `error"` with a bare quote can only be structural JSON: parse only then.
                if b'error"' in events and (error := sse.find_error(events)) is not None:
                    await _end_with_error(response, attempt, error, rename)
                    return False
                if b'"usage"' in events:
                    attempt.usage = usage_of(events) or attempt.usage
                attempt.events += count(events)
                if guard is not None:
                    events = guard.feed(events)
                    if guard.blocked is not None:
                        await _stopped(response, attempt, tally, rewrite(events))
                        return False
                if transcript is not None:
                    transcript.keep(events)
                if capture is not None:
                    capture.keep(events)
                if sse.is_done(events):
                    drained = await _drain(read)
                    await _finish(request, response, rewrite(events), attempt, tally)
                    break
                try:
                    await write(rewrite(events))
                except ConnectionResetError as gone:
                    raise ClientGone from gone
            waiting_since = perf_counter()
            chunk = await read()
            attempt.upstream_seconds += perf_counter() - waiting_since
            touch()
            if not chunk:
                if stopper.reason is not None:
                    raise ConnectionLost("stopped")  # reported as stopper.reason
                log.warning("upstream_stream_cut", backend=attempt.lease.backend)
                cut = UpstreamFailed("The model service ended the stream before it was complete.")
                await _fail(response, attempt, cut, Outcome.UPSTREAM_ERROR)
                return False
            events = feed(chunk)
    except (TimeoutError, UpstreamClientError) as caught:
        if stopper.reason is not None:
            failure, outcome = stopper.reason
        else:
            failure, outcome = connection_failure(caught)
            if isinstance(caught, ConnectionLost):
                failure = UpstreamFailed(
                    "The model service ended the stream before it was complete."
                )
        log.warning("upstream_stream_failed", backend=attempt.lease.backend, error=failure.message)
        await _fail(response, attempt, failure, outcome)
        return False
    finally:
        watchdog.cancel()
        state.streams.discard(token)
    if attempt.error_status is not None:
        return False  # an incomplete stream: ended with an error event (_finish)
    attempt.outcome = Outcome.OK
    return drained


def _rewriter(
    upstream_model: str, public_model: str, *, hide_usage: bool
) -> Callable[[bytes], bytes]:
    """What relayed events become: the public model name, and no usage report where the
    gateway asked for one the client did not."""
    rename = response_rewriter(upstream_model, public_model)
    if not hide_usage:
        return rename

    def rewrite(data: bytes) -> bytes:
        return sse.drop_usage_events(rename(data))

    return rewrite


async def _drain(read: Callable[[], Awaitable[bytes]]) -> bool:
    """Read an upstream body to its end after [DONE] (the chunked terminator, normally in
    the same packet), so the connection can be reused; one that lingers past DRAIN_TIMEOUT
    just loses it. Done before [DONE] goes to the client: a client that closes the moment
    it reads [DONE] (the SDKs do) cancels this task, and nothing may be awaited then."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            while await read():
                pass
    except (TimeoutError, UpstreamClientError):
        return False
    return True


async def _finish(
    request: web.Request,
    response: web.StreamResponse,
    events: bytes,
    attempt: Attempt,
    tally: StreamTally,
) -> None:
    """The last events, ending with [DONE]: the usage the gateway counted where the upstream
    reported none (sent to a client that asked for it), or, for a stream that ended with
    neither content nor a finish reason, an error event instead of [DONE]."""
    backend = attempt.lease.backend
    if not tally.answered:
        log.warning("upstream_stream_incomplete", backend=backend)
        request.app[STATE].metrics.incomplete_streams.labels(backend).inc()
        failure = UpstreamFailed(
            "The model service ended the stream without an answer (it may have been "
            "interrupted by another request)."
        )
        await _fail(response, attempt, failure, Outcome.INCOMPLETE, sse.without_done(events))
        return
    if attempt.usage is None:
        attempt.usage = (tally.call.prompt_estimate, tally.completion_tokens)
        attempt.usage_estimated = True
        if tally.call.add_usage:
            events = sse.without_done(events) + tally.usage_event(*attempt.usage) + sse.DONE
    await _write_last(request, response, events)


async def _stopped(
    response: web.StreamResponse, attempt: Attempt, tally: StreamTally, events: bytes
) -> None:
    """An output rule blocked the answer: `events` end with the content-filter chunk and
    the error event. The replica did its job (OK, never a failure against it), and the
    tokens it spent so far are recorded; its connection is closed, so it stops generating."""
    attempt.outcome = Outcome.OK
    if attempt.usage is None:
        attempt.usage = (tally.call.prompt_estimate, tally.completion_tokens)
        attempt.usage_estimated = True
    await _write(response, events)


async def _write_last(request: web.Request, response: web.StreamResponse, events: bytes) -> None:
    """Write the events that end with [DONE]. A write hands its bytes to the connection and
    may then wait for it to drain: a client that closes the moment it reads [DONE] (the SDKs
    do) makes that wait fail after the stream was delivered, which is no failure at all. A
    connection already closing before the write is a client that left."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone
    with contextlib.suppress(ConnectionResetError):
        await response.write(events)  # handed to a live connection: delivered


async def _end_with_error(
    response: web.StreamResponse,
    attempt: Attempt,
    error: dict[str, object],
    rename: tuple[str, str],
) -> None:
    log.warning("upstream_stream_error", backend=attempt.lease.backend, error=str(error)[:500])
    failure = failures.from_error_event(error, rename)
    await _fail(response, attempt, failure, Outcome.UPSTREAM_ERROR)


async def _fail(
    response: web.StreamResponse,
    attempt: Attempt,
    failure: GatewayError,
    outcome: Outcome,
    before: bytes = b"",
) -> None:
    """End a stream that already sent its first byte with an error event; the request is
    recorded with the error's status (the client already has a 200)."""
    attempt.outcome = outcome
    attempt.error_status = failure.status
    await _write(response, before + sse.error_event(failure.body()))


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError as exc:
        raise ClientGone from exc
