"""One try of one request on one leased replica: what was sent, what happened, and how a
client-library failure translates into the gateway's own errors."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from actors.backend.actor import Lease, Outcome, Release
from actors.backend.kinds import RequestIdMode
from gateway.http.errors import GatewayError, UpstreamFailed, UpstreamTimeout

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


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What one try sends up and what its answer carries down."""

    body: bytes  # the client's body, with the upstream's model name
    headers: dict[str, str]  # to the upstream
    response_headers: dict[str, str]  # to the client


class Attempt:
    """One request on one lease: what happened, for the release and the access log."""

    __slots__ = (
        "error_status",
        "events",
        "lease",
        "outcome",
        "signature",
        "started",
        "ttft",
        "upstream_seconds",
        "usage",
        "usage_estimated",
    )

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.outcome = Outcome.CANCELLED
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.upstream_seconds = 0.0  # waiting on the upstream: for the overhead metric
        self.usage: tuple[int, int] | None = None  # (prompt, completion) tokens
        self.usage_estimated = False  # usage counted by the gateway, not reported upstream
        self.events = 0  # stream events relayed: the completion's size when no usage comes
        self.signature: tuple[int, bytes] | None = None  # a SUSPECT failure, to compare
        # A stream that failed after its first byte: the status it is recorded with (the
        # client already has a 200), e.g. 502 for a cut, 499 for a client that left.
        self.error_status: int | None = None

    def release(self) -> None:
        latency = time.monotonic() - self.started
        self.lease.ref.notify(Release(self.lease.lease_id, self.outcome, latency, self.ttft))


def upstream_failure(exc: BaseException, attempt: Attempt) -> GatewayError:
    """Map a client-library exception from talking to the upstream."""
    if isinstance(exc, TimeoutError):
        attempt.outcome = Outcome.TIMEOUT
        return UpstreamTimeout("The model service did not answer in time.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        attempt.outcome = Outcome.CONNECT_ERROR
        return UpstreamFailed("The model service could not be reached.")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        attempt.outcome = Outcome.CONNECTION_LOST
        return UpstreamFailed("The connection to the model service failed.")
    attempt.outcome = Outcome.UPSTREAM_ERROR
    return UpstreamFailed("The connection to the model service failed.")
