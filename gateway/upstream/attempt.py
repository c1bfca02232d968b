"""One try of one request on one leased replica: what was sent, what happened, and the one
way a try opens its upstream call (shared by the unary and the streaming relay).

A failure is recorded on the try in one place (`Attempt.fail`): the error the client may get
and the outcome its replica is judged by travel together, so no path can raise one without
the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from actors.backend.actor import Lease, Outcome
from actors.backend.kinds import RequestIdMode
from actors.backend.pool import (
    ConnectFailed,
    ConnectionLost,
    UpstreamClientError,
    UpstreamResponse,
)
from actors.kernel.frozen import quick_init
from gateway.http.errors import GatewayError, UpstreamFailed, UpstreamTimeout
from gateway.upstream import failures

log = structlog.get_logger("gateway.upstream.attempt")

# What a failed try says about the replica, when a retry elsewhere may help.
RETRYABLE = frozenset(
    {
        Outcome.CONNECT_ERROR,
        Outcome.CONNECTION_LOST,
        Outcome.TIMEOUT,
        Outcome.UPSTREAM_ERROR,
        Outcome.SUSPECT,
    }
)
# Retries that need no budget: the replica is gone (refused, or dropped the connection before
# answering), so trying the next one moves the request instead of adding load. The budget is
# for replicas that answer badly (slowly, 5xx, 429): retrying those is what feeds a storm.
FREE_RETRY = frozenset({Outcome.CONNECT_ERROR, Outcome.CONNECTION_LOST})


@quick_init
@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What the handler parsed, for one forwarded request."""

    path: str  # "/v1/chat/completions"
    raw: bytes  # the client's body, forwarded untouched but for "model"
    sent_model: str  # the id or alias the client sent
    stream: bool
    request_id: str  # what the client sees and the logs use
    upstream_id: str  # the gateway's own UUID, sent upstream where the backend wants one
    hide_usage: bool = False  # the gateway asked for the usage report; the client did not
    add_usage: bool = False  # the client asked for a stream's usage report
    prompt_estimate: int = 0  # the prompt's tokens as the gateway estimates them
    n: int = 1  # choices asked for

    @property
    def prompt_param(self) -> str:
        """The field that holds the prompt, for errors about it."""
        return "messages" if self.path.endswith("/chat/completions") else "prompt"

    def request_id_header(self, mode: RequestIdMode) -> dict[str, str]:
        """The X-Request-ID to send a backend with this request-id mode."""
        if mode == "uuid":
            return {"X-Request-ID": self.upstream_id}
        if mode == "forward":
            return {"X-Request-ID": self.request_id}
        return {}


@quick_init
@dataclass(frozen=True, slots=True)
class Outgoing:
    """What one try sends up and what its answer carries down."""

    body: bytes  # the client's body, with the upstream's model name
    headers: dict[str, str]  # to the upstream
    response_headers: dict[str, str]  # to the client


class Attempt:
    """One request on one lease: what happened, for the release and the access log. The
    Exchange that began it releases its lease when it ends (`Exchange.end_try`)."""

    __slots__ = (
        "error_status",
        "events",
        "lease",
        "outcome",
        "signature",
        "started",
        "ttft",
        "upstream_seconds",
        "upstream_status",
        "usage",
        "usage_estimated",
    )

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.outcome = Outcome.CANCELLED
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.upstream_seconds = 0.0  # waiting on the upstream: for the overhead metric
        self.upstream_status: int | None = None  # the replica's HTTP status, once it answered
        self.usage: tuple[int, int] | None = None  # (prompt, completion) tokens
        self.usage_estimated = False  # usage counted by the gateway, not reported upstream
        self.events = 0  # stream events relayed: the completion's size when no usage comes
        self.signature: tuple[int, bytes] | None = None  # a SUSPECT failure, to compare
        # A stream that failed after its first byte: the status it is recorded with (the
        # client already has a 200), e.g. 502 for a cut, 499 for a client that left.
        self.error_status: int | None = None

    def fail(
        self,
        error: GatewayError,
        outcome: Outcome,
        signature: tuple[int, bytes] | None = None,
    ) -> GatewayError:
        """Record how this try failed; returns the error, for the caller to raise."""
        self.outcome = outcome
        if signature is not None:
            self.signature = signature
        return error

    def lost(self, exc: BaseException) -> GatewayError:
        """Record a client-library failure talking to the upstream (the connection, a
        timeout); returns the gateway's error for it."""
        log.warning("upstream_failed", backend=self.lease.backend, error=repr(exc))
        return self.fail(*connection_failure(exc))

    def rejected(self, status: int, payload: bytes, rename: tuple[str, str]) -> GatewayError:
        """Record an upstream's non-200 answer; returns the error the client gets."""
        log.warning(
            "upstream_error_status", backend=self.lease.backend, status=status, body=payload[:500]
        )
        error, outcome = failures.from_status(status, payload, rename)
        return self.fail(error, outcome, failures.signature(status, payload))


async def open_upstream(
    attempt: Attempt,
    call: UpstreamCall,
    out: Outgoing,
    timeout: float,
    rename: tuple[str, str],
    *,
    stream: bool,
) -> UpstreamResponse:
    """POST the try to its replica: a 200 response, whose body the caller reads and then
    releases or closes; anything else is recorded on the attempt and raised."""
    lease = attempt.lease
    headers = {**out.headers, "Accept": "text/event-stream"} if stream else out.headers
    waiting_since = time.perf_counter()
    try:
        upstream = await lease.pool.post(call.path, headers, out.body, timeout)
        attempt.upstream_status = upstream.status
        if upstream.status == 200:
            return upstream
        try:
            payload = await upstream.read()
        finally:
            upstream.release()
        raise attempt.rejected(upstream.status, payload, rename)
    except (TimeoutError, UpstreamClientError) as exc:
        raise attempt.lost(exc) from None
    finally:
        attempt.upstream_seconds += time.perf_counter() - waiting_since


def connection_failure(exc: BaseException) -> tuple[GatewayError, Outcome]:
    """What a failure talking to the upstream (actors.backend.pool's errors, a deadline)
    means, to the client and for the replica."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("The model service did not answer in time."), Outcome.TIMEOUT
    if isinstance(exc, ConnectFailed):
        return UpstreamFailed("The model service could not be reached."), Outcome.CONNECT_ERROR
    if isinstance(exc, ConnectionLost):
        lost = UpstreamFailed("The connection to the model service failed.")
        return lost, Outcome.CONNECTION_LOST
    return UpstreamFailed("The connection to the model service failed."), Outcome.UPSTREAM_ERROR
