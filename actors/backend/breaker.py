"""A circuit breaker for one replica: a pure state machine, fed outcomes, asked for admission.

    closed ──(N consecutive failures, or failure rate ≥ R over the window with ≥ V requests)──► open
    open ──(ejection time elapsed)──► half-open
    half-open ──(trial succeeds)──► closed        half-open ──(trial fails)──► open (longer)

The ejection time doubles with each consecutive ejection, up to a cap, and resets when the
replica closes again. Half-open lets a bounded number of trial requests through at once.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    consecutive_failures: int = Field(5, ge=1, description="open after this many in a row")
    failure_rate: float = Field(0.5, gt=0, le=1, description="open at this share of failures")
    window: float = Field(10.0, gt=0, description="seconds the failure rate is measured over")
    minimum_requests: int = Field(20, ge=1, description="no rate decision below this volume")
    ejection: float = Field(5.0, gt=0, description="first open period, seconds")
    max_ejection: float = Field(120.0, gt=0, description="cap on the growing open period")
    half_open_trials: int = Field(1, ge=1, description="trial requests at once when half-open")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = (
        "_consecutive",
        "_ejections",
        "_open_until",
        "_outcomes",
        "_settings",
        "_trials",
        "state",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        self._settings = settings
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._open_until = 0.0
        self._ejections = 0
        self._trials = 0

    @property
    def ejections(self) -> int:
        """Consecutive ejections so far (0 once the replica has recovered)."""
        return self._ejections

    def open_until(self) -> float:
        return self._open_until

    def allow(self, now: float) -> bool:
        """May a request go to this replica now? A True in half-open takes a trial slot,
        which the request's `record` gives back."""
        if self.state is BreakerState.OPEN:
            if now < self._open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trials = 0
        if self.state is BreakerState.HALF_OPEN:
            if self._trials >= self._settings.half_open_trials:
                return False
            self._trials += 1
        return True

    def current(self, now: float) -> BreakerState:
        """The state as it stands at `now`, for gauges: an open circuit whose ejection has
        ended is half-open (ready for a trial) even before a request comes to try it."""
        if self.state is BreakerState.OPEN and now >= self._open_until:
            return BreakerState.HALF_OPEN
        return self.state

    def available(self, now: float) -> bool:
        """Like allow, without taking a trial slot: for ranking replicas."""
        if self.state is BreakerState.OPEN:
            return now >= self._open_until
        if self.state is BreakerState.HALF_OPEN:
            return self._trials < self._settings.half_open_trials
        return True

    def abandon(self) -> None:
        """A request that was let through ended without a verdict (the client left): give
        its trial slot back."""
        if self.state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)

    def record(self, *, failed: bool, now: float) -> BreakerState | None:
        """Learn one outcome. Returns the new state if this outcome changed it."""
        if self.state is BreakerState.HALF_OPEN:  # a trial's verdict decides, either way
            if failed:
                return self._open(now)
            self.state = BreakerState.CLOSED
            self._ejections = 0
            self._consecutive = 0
            self._outcomes.clear()
            return BreakerState.CLOSED
        if self.state is BreakerState.OPEN:
            return None  # a straggler from before the ejection: already counted
        self._consecutive = self._consecutive + 1 if failed else 0
        outcomes = self._outcomes
        outcomes.append((now, failed))
        horizon = now - self._settings.window
        while outcomes and outcomes[0][0] < horizon:
            outcomes.popleft()
        if self._consecutive >= self._settings.consecutive_failures:
            return self._open(now)
        if failed and len(outcomes) >= self._settings.minimum_requests:
            failures = sum(1 for _, f in outcomes if f)
            if failures / len(outcomes) >= self._settings.failure_rate:
                return self._open(now)
        return None

    def _open(self, now: float) -> BreakerState:
        settings = self._settings
        ejection = min(settings.max_ejection, settings.ejection * 2**self._ejections)
        self._ejections += 1
        self._open_until = now + ejection
        self.state = BreakerState.OPEN
        # The counts start afresh where they are next used: trials on entering half-open
        # (allow), outcomes on closing (record).
        return BreakerState.OPEN
