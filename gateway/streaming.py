"""Relaying a stream: SSE events from the upstream to the client, one by one as they arrive.

Before the first event reaches the client, a failure is an ordinary HTTP error (and the
request may be retried on another replica); after it, the stream ends with an OpenAI error
event, never a silent cut. A client that leaves closes the upstream connection, so the model
server stops generating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import structlog
from aiohttp import web

from actors.backend import Outcome
from actors.router import RouteDecision
from gateway import sse, upstream_errors
from gateway.attempt import Attempt, Outgoing, UpstreamCall, upstream_failure
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamFailed, UpstreamTimeout
from gateway.rewrite import response_rewriter
from gateway.state import REQUEST, STATE, OpenStreams
from gateway.transcript import Transcript
from gateway.usage import usage_of

log = structlog.get_logger("gateway.streaming")

DRAIN_TIMEOUT = 1.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class ClientGone(Exception):
    """Writing to the client failed: it disconnected."""


class IdleWatchdog:
    """Calls `on_idle` when a stream's upstream falls silent for `idle` seconds.

    A chunk only stamps the time; one timer per stream re-arms itself when it finds the stream
    was active, so the cost per chunk is an attribute store, not a timer reschedule.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_on_idle", "last")

    def __init__(self, idle: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._on_idle = on_idle
        self.last = self._loop.time()
        self._handle = self._loop.call_at(self.last + idle, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        deadline = self.last + self._idle
        if self._loop.time() >= deadline:
            self._on_idle()
        else:
            self._handle = self._loop.call_at(deadline, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class StreamStop:
    """Ends a stream from outside its loop (idle too long, the gateway shutting down): records
    why, then closes the upstream response, which wakes the pending read with an error that
    the loop then reports as this reason instead of as a cut."""

    __slots__ = ("_close", "reason")

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self.reason: tuple[GatewayError, Outcome] | None = None

    def stop(self, error: GatewayError, outcome: Outcome) -> None:
        if self.reason is None:
            self.reason = (error, outcome)
            self._close()


async def relay_stream(
    request: web.Request,
    attempt: Attempt,
    call: UpstreamCall,
    decision: RouteDecision,
    out: Outgoing,
    first_byte: float,
) -> web.StreamResponse:
    lease = attempt.lease
    rename = (lease.upstream_model, decision.model)
    framer = sse.EventFramer()
    upstream: aiohttp.ClientResponse | None = None
    clean_end = False
    try:
        # Before the first byte reaches the client, a failure is an ordinary HTTP error.
        waiting_since = time.perf_counter()
        try:
            async with asyncio.timeout(first_byte):
                upstream = await lease.session.post(
                    lease.base_url + call.path,
                    data=out.body,
                    headers={**out.headers, "Accept": "text/event-stream"},
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
            raise upstream_failure(exc, attempt) from None
        finally:
            attempt.upstream_seconds += time.perf_counter() - waiting_since
        first_error = sse.find_error(first)
        if first_error is not None:
            attempt.outcome = Outcome.UPSTREAM_ERROR
            log.warning(
                "upstream_stream_error", backend=lease.backend, error=str(first_error)[:500]
            )
            raise upstream_errors.from_error_event(first_error, rename)
        attempt.ttft = time.monotonic() - attempt.started

        response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **out.response_headers})
        await response.prepare(request)
        request[REQUEST].first_byte_at = time.perf_counter()
        rewrite = response_rewriter(lease.upstream_model, decision.model)
        if call.hide_usage:
            rename_model = rewrite

            def rewrite(data: bytes) -> bytes:
                return sse.drop_usage_events(rename_model(data))

        try:
            streams = request.app[STATE].streams
            transcript = request[REQUEST].transcript
            clean_end = await _pump(
                response, upstream, framer, first, rewrite, attempt, rename, streams, transcript
            )
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
    streams: OpenStreams,
    transcript: Transcript | None,
) -> bool:
    """Relay events until [DONE]. After the first byte, a failure ends the stream with an
    error event, never a silent cut. Returns True if the upstream finished cleanly.

    This loop runs once per upstream read of every stream: it is kept to a few C-level
    byte scans and the write; the rare cases (errors, cuts) leave it.
    """
    read = upstream.content.readany
    write = response.write
    perf_counter = time.perf_counter
    feed = framer.feed
    events = first
    stopper = StreamStop(upstream.close)
    idle = attempt.lease.timeouts.idle
    watchdog = IdleWatchdog(
        idle,
        lambda: stopper.stop(
            UpstreamTimeout("The model service did not answer in time."), Outcome.TIMEOUT
        ),
    )
    touch = watchdog.touch
    token = streams.add(
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
                attempt.events += events.count(b"data:")
                if transcript is not None:
                    transcript.keep(events)
                try:
                    await write(rewrite(events))
                except ConnectionResetError as gone:
                    raise ClientGone from gone
                if sse.is_done(events):
                    break
            waiting_since = perf_counter()
            chunk = await read()
            attempt.upstream_seconds += perf_counter() - waiting_since
            touch()
            if not chunk:
                if stopper.reason is not None:
                    raise aiohttp.ClientPayloadError("stopped")  # reported as stopper.reason
                attempt.outcome = Outcome.UPSTREAM_ERROR
                log.warning("upstream_stream_cut", backend=attempt.lease.backend)
                cut = UpstreamFailed("The model service ended the stream before it was complete.")
                await _write(response, sse.error_event(cut.body()))
                return False
            events = feed(chunk)
    except (TimeoutError, aiohttp.ClientError) as caught:
        if stopper.reason is not None:
            failure, attempt.outcome = stopper.reason
        else:
            failure = upstream_failure(caught, attempt)
            if isinstance(caught, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
                failure = UpstreamFailed(
                    "The model service ended the stream before it was complete."
                )
        log.warning("upstream_stream_failed", backend=attempt.lease.backend, error=failure.message)
        await _write(response, sse.error_event(failure.body()))
        return False
    finally:
        watchdog.cancel()
        streams.discard(token)
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
