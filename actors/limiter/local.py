"""Rate-limit arithmetic: requests per minute (GCRA), tokens per minute (a token bucket that
may go into debt when real usage exceeds the estimate), and requests in flight.

`LocalLimits` keeps the state in this process (the embedded default); `actors.limiter.redis`
runs the same arithmetic in Redis, atomically, on Redis's clock. Both admit a request
against several subjects at once (its key, and its model when the model has limits): all
pass and are charged together, or none is charged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from actors.kernel.frozen import quick_init
from actors.limiter.budget import Budget, Period

WINDOW = 60.0  # seconds: limits are per minute
# Seconds: above a float's rounding of clock readings, below any interval between requests.
_CLOCK_SLACK = 1e-6


class LimitSpec(BaseModel):
    """Limits of one subject; None: no limit of that kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute")
    max_concurrent: int | None = Field(None, ge=1, description="requests in flight at once")
    budget: Budget | None = Field(None, description="tokens per day, week or month")

    @property
    def any(self) -> bool:
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.max_concurrent is not None
            or self.budget is not None
        )


@quick_init
@dataclass(frozen=True, slots=True)
class Subject:
    name: str  # "key:<id>" or "model:<name>"
    spec: LimitSpec
    period: Period | None = None  # the budget's current period, when the spec has a budget


@quick_init
@dataclass(frozen=True, slots=True)
class Quota:
    """What is left of one subject's limits after an admission, for the response headers."""

    rpm: int | None
    remaining_requests: int
    reset_requests: float  # seconds until the request limit is whole again
    tpm: int | None
    remaining_tokens: int
    reset_tokens: float


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    kind: str = ""  # what refused: "requests", "tokens" or "concurrency"
    subject: str = ""
    retry_after: float = 0.0  # seconds until the refused limit would admit this request
    quota: Quota | None = None  # of the first subject (the key), where known


_ALLOWED = Verdict(True)


class _State:
    __slots__ = ("in_flight", "level", "spent", "stamp", "tat")

    def __init__(self) -> None:
        self.tat = 0.0  # GCRA's theoretical arrival time
        self.level: float | None = None  # tokens in the bucket (None: full)
        self.stamp = 0.0  # when `level` was last brought up to date
        self.in_flight = 0
        self.spent: dict[str, float] = {}  # the budget's spend, by period id (current, last)


def gcra(tat: float, now: float, rpm: int) -> tuple[bool, float, float]:
    """(allowed, the new tat if allowed, seconds to wait if not). A burst of up to `rpm`
    requests is allowed, then one every 60/rpm seconds."""
    interval = WINDOW / rpm
    new_tat = max(tat, now) + interval
    if new_tat - now > WINDOW + 1e-9:
        return False, tat, new_tat - WINDOW - now
    return True, new_tat, 0.0


def refill(level: float | None, stamp: float, now: float, tpm: int) -> float:
    if level is None:
        return float(tpm)
    return min(float(tpm), level + (now - stamp) * tpm / WINDOW)


def quota_of(spec: LimitSpec, tat: float, level: float | None, now: float) -> Quota:
    remaining_requests = reset_requests = 0.0
    if spec.rpm is not None:
        interval = WINDOW / spec.rpm
        # The slack: `now + 60 - (now + 30)` is 29.99... at some clock readings, and a
        # first request under rpm 2 would be told that none is left.
        room = now + WINDOW - max(tat, now) + _CLOCK_SLACK
        remaining_requests = max(0.0, math.floor(room / interval))
        reset_requests = max(0.0, tat - now)
    remaining_tokens = reset_tokens = 0.0
    if spec.tpm is not None:
        current = float(spec.tpm) if level is None else level
        remaining_tokens = max(0.0, math.floor(current))
        reset_tokens = max(0.0, (spec.tpm - current) * WINDOW / spec.tpm)
    return Quota(
        spec.rpm,
        int(remaining_requests),
        reset_requests,
        spec.tpm,
        int(remaining_tokens),
        reset_tokens,
    )


class LocalLimits:
    """The state in this process. Not thread-safe: owned by RateLimiterActor."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}

    def _state(self, name: str) -> _State:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _State()
        return state

    def admit(
        self,
        subjects: tuple[Subject, ...],
        tokens: int,
        now: float,
        seeds: dict[str, float] | None = None,
    ) -> Verdict:
        """`seeds`: a budget's spend so far in its period (from the ledger), by subject, for
        periods this process has not seen yet; without one, the verdict asks for it
        (kind "seed")."""
        if not subjects:
            return _ALLOWED
        refusal = self._admit(subjects, tokens, now, seeds or {})
        # Allowed or not, the client is told what is left (x-ratelimit-*).
        first = subjects[0]
        state = self._state(first.name)
        tpm = first.spec.tpm
        level = None if tpm is None else refill(state.level, state.stamp, now, tpm)
        quota = quota_of(first.spec, state.tat, level, now)
        if refusal is None:
            return Verdict(True, quota=quota)
        return Verdict(False, refusal.kind, refusal.subject, refusal.retry_after, quota)

    def _admit(
        self, subjects: tuple[Subject, ...], tokens: int, now: float, seeds: dict[str, float]
    ) -> Verdict | None:
        """None when every subject admits the request (and it is charged), else the refusal."""
        plans: list[tuple[_State, float, float | None, float | None]] = []
        for subject in subjects:
            spec, state = subject.spec, self._state(subject.name)
            spent: float | None = None
            if spec.budget is not None and subject.period is not None:
                period = subject.period
                spent = state.spent.get(period.id)
                if spent is None:
                    if subject.name not in seeds:
                        return Verdict(False, "seed", subject.name)
                    spent = seeds[subject.name]
                if spent + tokens > spec.budget.tokens:
                    # `now` is the monotonic clock; a period ends at a wall-clock time.
                    wait = max(0.0, period.end - time.time())
                    return Verdict(False, "budget", subject.name, wait)
                spent += tokens
            new_tat = state.tat
            if spec.rpm is not None:
                allowed, new_tat, wait = gcra(state.tat, now, spec.rpm)
                if not allowed:
                    return Verdict(False, "requests", subject.name, wait)
            level: float | None = None
            if spec.tpm is not None:
                level = refill(state.level, state.stamp, now, spec.tpm)
                need = min(
                    tokens, spec.tpm
                )  # a request larger than the limit waits for a full bucket
                if level < need:
                    return Verdict(
                        False, "tokens", subject.name, (need - level) * WINDOW / spec.tpm
                    )
                level -= need
            if spec.max_concurrent is not None and state.in_flight >= spec.max_concurrent:
                return Verdict(False, "concurrency", subject.name, 1.0)
            plans.append((state, new_tat, level, spent))
        for (state, new_tat, level, spent), subject in zip(plans, subjects, strict=True):
            state.tat = new_tat
            if level is not None:
                state.level, state.stamp = level, now
            if spent is not None and subject.period is not None:
                if subject.period.id not in state.spent and len(state.spent) > 1:
                    state.spent = {}  # a new period: the older ones are done with
                state.spent[subject.period.id] = spent
            if subject.spec.max_concurrent is not None:
                state.in_flight += 1
        return None

    def settle(self, subjects: tuple[Subject, ...], charged: int, used: int, now: float) -> None:
        """The request has ended: free its slot, and charge or refund the difference
        between the tokens it used and the estimate it was charged."""
        for subject in subjects:
            spec, state = subject.spec, self._state(subject.name)
            if spec.max_concurrent is not None:
                state.in_flight = max(0, state.in_flight - 1)
            if spec.tpm is not None:
                level = refill(state.level, state.stamp, now, spec.tpm)
                state.level = min(float(spec.tpm), level + min(charged, spec.tpm) - used)
                state.stamp = now
            if spec.budget is not None and subject.period is not None:
                spent = state.spent.get(subject.period.id)
                if spent is not None:  # the period the request was admitted in
                    state.spent[subject.period.id] = max(0.0, spent + used - charged)

    def spent(self, subject: Subject) -> float | None:
        """A budget's spend in its current period, if this process has it."""
        if subject.period is None:
            return None
        state = self._states.get(subject.name)
        return None if state is None else state.spent.get(subject.period.id)

    def in_flight(self) -> dict[str, int]:
        """Requests holding a slot, by subject (those with any)."""
        return {name: state.in_flight for name, state in self._states.items() if state.in_flight}
