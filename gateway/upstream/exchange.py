"""One request's life in one object, with one exit.

The edge middleware opens an `Exchange` for every request and closes it once, whatever
happened: an answer, an error, a cancelled task. What the request acquires on its way is
recorded on it, and the exit gives each back exactly once, in reverse order:

    acquired                                      given back at the exit
    the route: counted in flight (RouterActor)    RequestEnded
    the admission: an estimate charged, a slot    Settle: slot freed, tokens reconciled
      held (RateLimiterActor)                       (no completion, no charge)
    a try's lease (BackendActor)                  Release with the try's outcome; a try
                                                    that ends earlier is released then
    a retry grant (RouterActor)                   RetryEnded
    a SUSPECT try awaiting a second opinion       Judge, or forgotten (gateway.upstream.blame)
    usage and timings                             the ledger's record, metrics, access log

Nothing else in the gateway sends these messages or writes these records. The exit awaits
nothing (every effect is a tell or a counter), so a cancellation cannot interrupt it. The
lease, the retry grant and the second opinion are given back at the exit itself;
RequestEnded, Settle and the records on the loop's next turn, with every other exit of
this one (gateway.upstream.exits: a batch of them runs on warm caches).
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import re
import time
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType

import structlog
from aiohttp import web

from actors.backend.actor import Lease, Outcome, Release
from actors.limiter.local import Subject
from actors.router.actor import AllowRetry, RequestEnded, RetryEnded, RouteDecision
from gateway.cache.capture import StreamCapture
from gateway.guardrails.engine import Findings, Guard
from gateway.http import limiter
from gateway.http.asks import ask
from gateway.http.auth import presented_secrets
from gateway.http.state import CONFIG, STATE, GatewayState
from gateway.tracing.request import RequestTrace
from gateway.upstream.attempt import Attempt, UpstreamCall
from gateway.upstream.blame import Blame
from gateway.upstream.records import record_metrics, report_output, usage_record
from gateway.upstream.transcript import Transcript

access_log = structlog.get_logger("gateway.access")
_UNTRACED: AbstractContextManager[None] = nullcontext()
# Probes and scrapes, every second from every load balancer and Prometheus: not traced.
_UNTRACED_PATHS = ("/health/", "/metrics")

CLIENT_GONE = 499  # the status of a request whose client left (nginx's)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Shaped like a key: never echoed, logged or stored (a client once sent its key as its id).
_KEY_SHAPED = re.compile(r"(?i)^(?:sk|pk|rk)-")


# A version 4 UUID's fixed bits: the version nibble (4) and the variant's two (10).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _uuid4() -> str:
    """A random UUID, spelled as str(uuid.uuid4()) spells one. Not a secret, only unique: the
    PRNG is far cheaper than a getrandom() call, and formatting the digits half the cost of
    building a uuid.UUID (1.4 -> 0.7 µs)."""
    digits = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def request_ids(request: web.Request) -> tuple[str, str]:
    """(the request's id for the client and the logs, the gateway's own UUID). The client's
    X-Request-ID is kept when it is a plain token; the UUID is what backends get (some accept
    nothing else), so no client-chosen id ever reaches a model server unless configured."""
    own = _uuid4()
    sent = request.headers.get("x-request-id")
    if (
        sent is not None
        and _REQUEST_ID.fullmatch(sent)
        and not _KEY_SHAPED.match(sent)
        and sent not in presented_secrets(request)
    ):
        return sent, own
    return own, own


class Exchange:
    """Everything one request acquired and learnt, from its arrival to its one exit."""

    __slots__ = (
        "_answered",
        "_app",
        "_endpoint",
        "_method",
        "_path",
        "_retry_granted",
        "admitted",
        "attempt",
        "attempts",
        "backend",
        "blame",
        "cache_similarity",
        "cache_status",
        "cached_tokens",
        "call",
        "capture",
        "charge_cached",
        "decision",
        "error_status",
        "first_byte_at",
        "guard",
        "guardrails",
        "key_id",
        "model",
        "output_findings",
        "rate_headers",
        "relayed_events",
        "request_id",
        "route_reason",
        "served_model",
        "started",
        "status",
        "trace",
        "transcript",
        "upstream_id",
        "upstream_seconds",
        "usage",
        "usage_estimated",
    )

    def __init__(self, request: web.Request) -> None:
        # What the exit needs of the request, not the request itself: the request holds its
        # exchange (request[EXCHANGE]), and a reference back would make every request a
        # cycle for the garbage collector (measured: 7% of c=100 throughput).
        self._app = request.app
        self._method, self._path = request.method, request.path
        resource = request.match_info.route.resource
        self._endpoint = resource.canonical if resource is not None else "unmatched"
        self.request_id, self.upstream_id = request_ids(request)
        self.started = time.perf_counter()
        self.status = 500  # until the edge knows better
        self.key_id: str | None = None
        self.model: str | None = None  # as the client named it
        self.rate_headers: dict[str, str] | None = None  # x-ratelimit-*, once admitted
        self.transcript: Transcript | None = None  # only with logging.log_prompts
        state = self._app.get(STATE)
        tracing = state.tracing if state is not None else None
        self.trace: RequestTrace | None = None  # only with tracing.enabled
        if tracing is not None and not self._path.startswith(_UNTRACED_PATHS):
            self.trace = RequestTrace(
                tracing.tracer, self._method, self._endpoint, self._path, request.headers
            )
        # What it acquires, each given back at the exit:
        self.decision: RouteDecision | None = None
        self.call: UpstreamCall | None = None
        self.blame = Blame()
        self.admitted: limiter.Admitted | None = None
        self.attempt: Attempt | None = None  # the try in progress
        self._retry_granted = False
        self._answered = False  # the last try ended with a complete answer
        # What its tries learnt:
        self.served_model: str | None = None  # the configured model that served it
        self.route_reason: str | None = None  # set when the router chose another model
        self.backend: str | None = None
        self.attempts = 0  # tries across replicas (1 unless a replica failed before a byte)
        self.upstream_seconds = 0.0  # time spent waiting on upstreams, all tries
        self.first_byte_at: float | None = None  # perf_counter() at a stream's first event
        self.usage: tuple[int, int] | None = None  # (prompt, completion) tokens
        self.usage_estimated = False  # counted by the gateway: the upstream reported none
        self.relayed_events = 0  # stream events relayed to the client
        # A stream that failed after its 200 went out: the status it is recorded with.
        self.error_status: int | None = None
        # The response cache (gateway.http.caching): x-citadel-cache, what a hit saved (and
        # whether tokens-per-minute is charged for it), and a stream's events to store.
        self.cache_status: str | None = None
        self.cache_similarity: float | None = None  # a semantic hit's
        self.cached_tokens: tuple[int, int] | None = None
        self.charge_cached = False
        self.capture: StreamCapture | None = None
        # Guardrails (gateway.http.guarding): the guard whose output rules the answer passes,
        # the ids of the rules that fired, and what the output rules found in the answer
        # (counted and logged at the exit).
        self.guard: Guard | None = None
        self.guardrails: tuple[str, ...] = ()
        self.output_findings: Findings | None = None

    @property
    def state(self) -> GatewayState:
        return self._app[STATE]

    @property
    def route(self) -> tuple[RouteDecision, UpstreamCall]:
        """The decision and the call of a routed request (forwarding only runs after it)."""
        if self.decision is None or self.call is None:
            raise RuntimeError("the request has not been routed")
        return self.decision, self.call

    # What the request acquires, in the order it does.

    def routed(self, decision: RouteDecision, call: UpstreamCall) -> None:
        """The router counted the request in flight for `decision.model`. Called in the same
        step as the router's answer (a SyncActor's: no await between), so no cancellation
        can fall between the count and its record here."""
        self.decision, self.call = decision, call
        self.served_model = decision.model
        if decision.rerouted:
            self.route_reason = decision.reason
        self.blame.alone = len(decision.candidates) == 1

    def step(self, name: str) -> AbstractContextManager[None]:
        """A step of the request (a span when it is traced)."""
        return _UNTRACED if self.trace is None else self.trace.step(name)

    async def admit(self, subjects: tuple[Subject, ...], prompt: int, budget: int) -> None:
        """Charge the request's estimate under its limits, or raise 429 (503)."""
        with self.step("admit"):
            admitted = await limiter.admit(
                self.state, self.request_id, subjects, prompt, budget, self._admitted_late
            )
        if admitted is not None:
            self.admitted = admitted
            self.rate_headers = admitted.headers

    def _admitted_late(self, admitted: limiter.Admitted) -> None:
        """Admitted as the request was cancelled: held like any admission, so the exit (which
        the cancellation is on its way to) settles it."""
        self.admitted = admitted

    def begin_try(self, lease: Lease) -> Attempt:
        """A replica granted a lease: the next try, until `end_try` or the exit."""
        self.end_try()
        attempt = self.attempt = Attempt(lease)
        self.backend = lease.backend
        self.attempts += 1
        if self.trace is not None:
            self.trace.try_started(lease.backend, lease.base_url, self.attempts)
        return attempt

    async def grant_retry(self) -> bool:
        """Whether the model's retry budget allows another try; the grant is given back when
        that try ends (or at the exit, if none followed)."""
        decision, _ = self.route
        granted = await ask(self.state.router, AllowRetry(decision.model), "router")
        self._retry_granted = granted
        return granted

    def end_try(self) -> None:
        """The try in progress ended: its verdict heard, its lease released with its outcome,
        what it learnt kept, the retry grant it used given back."""
        attempt = self.attempt
        if attempt is None:
            return
        self.attempt = None
        self.blame.hear(attempt)  # before the release: it may change the outcome
        lease = attempt.lease
        latency = time.monotonic() - attempt.started
        lease.ref.notify(Release(lease.lease_id, attempt.outcome, latency, attempt.ttft))
        self.upstream_seconds += attempt.upstream_seconds
        if attempt.usage is not None:
            self.usage, self.usage_estimated = attempt.usage, attempt.usage_estimated
        self.relayed_events += attempt.events
        self.error_status = attempt.error_status
        if self.trace is not None:
            stream = self.call is not None and self.call.stream
            self.trace.try_ended(
                attempt.outcome.value, attempt.upstream_status, attempt.events, stream
            )
        self._answered = attempt.outcome is Outcome.OK
        self._return_retry_grant()

    def _return_retry_grant(self) -> None:
        if self._retry_granted:
            self._retry_granted = False
            decision, _ = self.route
            self.state.router.notify(RetryEnded(decision.model))

    @property
    def output_blocked(self) -> str | None:
        """The id of the output rule that stopped the answer, if one did."""
        findings = self.output_findings
        return None if findings is None or findings.blocked is None else findings.blocked.rule.id

    @property
    def answered(self) -> bool:
        """Whether the last try ended with a complete answer."""
        return self._answered

    def answered_from_cache(self, tokens: tuple[int, int], *, charged: bool) -> None:
        """The answer came from the cache: no model spent `tokens` on it (tokens-per-minute
        is charged them only if `charged`)."""
        self.cache_status = "hit"
        self.backend = "cache"
        self.cached_tokens, self.charge_cached = tokens, charged
        self.usage = (0, 0)
        self._answered = True

    # The one exit.

    def __enter__(self) -> Exchange:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            gone = issubclass(exc_type, asyncio.CancelledError | ConnectionResetError)
            self.status = CLIENT_GONE if gone else 500
        self.end_try()
        self._return_retry_grant()
        self.blame.close()
        if self.trace is not None:
            self.trace.finish(self.status, self.model, self.served_model, self.usage)
        elapsed = time.perf_counter() - self.started
        state = self._app.get(STATE)
        if state is None:  # the actor tree is not up: nothing to settle, only the line
            self.write_records(elapsed)
            return
        # A traced request's log lines carry its trace id (bound in its context).
        context = None if self.trace is None else contextvars.copy_context()
        state.exit_records.defer(self, elapsed, context)

    def write_records(self, elapsed: float) -> None:
        """The exit's records, on the loop's next turn with the other exits' of this one
        (gateway.upstream.exits): settlement, the router's count, metrics, the ledger's
        record, the transcript, the access line."""
        state = self._app.get(STATE)
        logging = (state.config if state is not None else self._app[CONFIG]).logging
        if state is not None:
            if self.output_findings is not None and self.output_findings.fired:
                report_output(state.metrics, self, self.output_findings)
            if self.admitted is not None:
                charged = self.cached_tokens if self.charge_cached else self.usage
                limiter.settle(
                    state.limiter,
                    self.admitted,
                    self.request_id,
                    charged,
                    self.relayed_events,
                    answered=self._answered,
                )
            if self.decision is not None:
                state.router.notify(RequestEnded(self.decision.model))
            record_metrics(state.metrics, self._endpoint, self, elapsed)
            if self.cached_tokens is not None and state.cache is not None:
                saved = state.cache.metrics.saved_tokens
                saved.labels(self.served_model or "-", "prompt").inc(self.cached_tokens[0])
                saved.labels(self.served_model or "-", "completion").inc(self.cached_tokens[1])
            if state.ledger is not None and self.served_model is not None:
                record = usage_record(self._endpoint, self, elapsed, state.instance)
                state.ledger.notify(record)
        if self.transcript is not None and self.served_model is not None:
            self.transcript.log(self.request_id, self.served_model, logging.prompt_log_chars)
        if not logging.access_log:
            return
        access_log.info(
            "request",
            request_id=self.request_id,
            upstream_request_id=self.upstream_id if self.upstream_id != self.request_id else None,
            method=self._method,
            path=self._path,
            status=self.status,
            model=self.model,
            served_model=self.served_model,
            backend=self.backend,
            key_id=self.key_id,
            attempts=self.attempts,
            prompt_tokens=self.usage[0] if self.usage else None,
            completion_tokens=self.usage[1] if self.usage else None,
            usage_estimated=self.usage_estimated or None,
            cache=self.cache_status,
            guardrails=list(self.guardrails) or None,
            saved_tokens=sum(self.cached_tokens) if self.cached_tokens else None,
            latency_ms=round(elapsed * 1000, 3),
        )


EXCHANGE = web.RequestKey("citadel_exchange", Exchange)
