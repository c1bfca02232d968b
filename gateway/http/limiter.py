"""The HTTP side of RateLimiterActor: which limits a request falls under, OpenAI's rate-limit
headers, 429s with an exact retry time, and settling every admitted request however it ends.

Headers (on every response to a key with limits, as OpenAI sends them):
`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests`
and the same three for tokens; resets as durations like `1s`, `6m0s`, `120ms`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.auth.actor import Principal
from actors.kernel import ActorRef
from actors.limiter.actor import UNAVAILABLE, Admission, Admit, Settle
from actors.limiter.budget import BudgetClock
from actors.limiter.local import LimitSpec, Quota, Subject, Verdict
from gateway.http.asks import ask
from gateway.http.errors import BudgetExceeded, RateLimited, ServiceUnavailable
from gateway.http.state import GatewayState

_KIND_TEXT = {
    "budget": "token budget",
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "concurrent requests",
}


@dataclass(slots=True)
class Admitted:
    """An admitted request's charge, settled when it ends (`settle`, from the request's
    exit: gateway.upstream.exchange)."""

    subjects: tuple[Subject, ...]
    charged: int
    prompt_tokens: int  # the estimate, for a stream whose upstream reports no usage
    shared: bool
    headers: dict[str, str] | None  # x-ratelimit-* for the response


def subjects_of(
    principal: Principal, model: str, model_limits: LimitSpec, clock: BudgetClock
) -> tuple[Subject, ...]:
    """The limits a request falls under: its key's, its model's; each budget with its
    current period (by `clock`, in the configured time zone)."""
    subjects = []
    key_limits = principal.scopes.limits
    if key_limits.any:
        subjects.append(_subject(f"key:{principal.key_id}", key_limits, clock))
    if model_limits.any:
        subjects.append(_subject(f"model:{model}", model_limits, clock))
    return tuple(subjects)


def _subject(name: str, spec: LimitSpec, clock: BudgetClock) -> Subject:
    if spec.budget is None:
        return Subject(name, spec)
    return Subject(name, spec, clock.period(spec.budget.period, time.time()))


async def admit(
    state: GatewayState,
    request_id: str,
    subjects: tuple[Subject, ...],
    prompt_tokens: int,
    completion_budget: int,
    abandoned: Callable[[Admitted], None],
) -> Admitted | None:
    """Charge the request (its prompt estimate and completion budget), or raise 429 (503
    when the limiter cannot decide). `abandoned` gets an admission that came as the request
    was cancelled, which it never returns: the caller settles it like any other."""
    if not subjects:
        return None
    tokens = prompt_tokens + completion_budget

    def admitted_late(admission: Admission) -> None:
        # Admitted just as the request was cancelled (its client left): the caller records
        # it, and the request's exit, which follows, settles it.
        if admission.verdict.allowed:
            abandoned(Admitted(subjects, tokens, prompt_tokens, admission.shared, None))

    # Decided in Redis, the reply is deferred: answered when Redis has.
    admit = Admit(subjects, tokens, request_id)
    admission = await ask(state.limiter, admit, "rate limiter", abandoned=admitted_late)
    verdict = admission.verdict
    if not verdict.allowed:
        state.metrics.rate_limited.labels(verdict.kind).inc()
        if verdict.kind == UNAVAILABLE:
            raise ServiceUnavailable(
                "The rate limiter's store is unreachable. Retry shortly.",
                headers={"Retry-After": "1"},
            )
        who = "this API key" if verdict.subject.startswith("key:") else "this model"
        if verdict.kind == "budget":
            raise _budget_spent(subjects, verdict, who)
        wait_ms = max(1, math.ceil(verdict.retry_after * 1000))
        quota = verdict.quota or refused_quota(subjects[0].spec, verdict)
        raise RateLimited(
            f"Rate limit reached for {who}: {_KIND_TEXT.get(verdict.kind, verdict.kind)}. "
            f"Please try again in {duration(verdict.retry_after)}.",
            code="rate_limit_exceeded",
            headers={
                "Retry-After": str(max(1, math.ceil(verdict.retry_after))),
                "retry-after-ms": str(wait_ms),
                **headers_of(quota),
            },
        )
    headers = headers_of(verdict.quota) if verdict.quota is not None else None
    return Admitted(subjects, tokens, prompt_tokens, admission.shared, headers)


def settle(
    limiter: ActorRef,
    admitted: Admitted,
    request_id: str,
    usage: tuple[int, int] | None,
    relayed_events: int,
    *,
    answered: bool,
) -> None:
    """Free the request's slot and reconcile its tokens; a tell, safe on every exit path
    (including cancellation). A request that produced no completion (the upstream failed or
    refused it) is charged nothing."""
    if usage is not None:
        used = sum(usage)
    elif relayed_events:  # a stream cut short: count what was relayed
        used = admitted.prompt_tokens + relayed_events
    elif answered:  # an answer without a usage report: the estimate stands
        used = admitted.charged
    else:
        used = 0
    limiter.notify(Settle(admitted.subjects, admitted.charged, used, request_id, admitted.shared))


def _budget_spent(subjects: tuple[Subject, ...], verdict: Verdict, who: str) -> BudgetExceeded:
    """OpenAI's answer to a spent quota (a 429, `insufficient_quota`), with when it resets."""
    subject = next(s for s in subjects if s.name == verdict.subject)
    assert subject.spec.budget is not None
    assert subject.period is not None
    budget = subject.spec.budget
    resets = subject.period.ends_at
    return BudgetExceeded(
        f"The token budget of {who} for this {budget.period} ({budget.tokens} tokens) is "
        f"spent. It resets at {resets}.",
        headers={
            "Retry-After": str(max(1, math.ceil(verdict.retry_after))),
            "x-citadel-budget-reset": resets,
        },
    )


def refused_quota(spec: LimitSpec, verdict: Verdict) -> Quota:
    """The headers' figures for a refusal whose store gave none (Redis answers a refusal with
    the wait only): the refused limit is spent until the wait is over."""
    requests = verdict.kind == "requests"
    tokens = verdict.kind == "tokens"
    return Quota(
        spec.rpm,
        0 if requests else spec.rpm or 0,
        verdict.retry_after if requests else 0.0,
        spec.tpm,
        0 if tokens else spec.tpm or 0,
        verdict.retry_after if tokens else 0.0,
    )


def headers_of(quota: Quota) -> dict[str, str]:
    headers = {}
    if quota.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(quota.rpm)
        headers["x-ratelimit-remaining-requests"] = str(quota.remaining_requests)
        headers["x-ratelimit-reset-requests"] = duration(quota.reset_requests)
    if quota.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(quota.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(quota.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = duration(quota.reset_tokens)
    return headers


def duration(seconds: float) -> str:
    """OpenAI's duration strings: `120ms`, `1s`, `6m0s`, `1h2m3s` (rounded up)."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
