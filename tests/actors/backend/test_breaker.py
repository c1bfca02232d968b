"""The circuit breaker's state machine, on a virtual clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors.backend.breaker import BreakerSettings, BreakerState, CircuitBreaker

SETTINGS = BreakerSettings(
    consecutive_failures=3,
    failure_rate=0.5,
    window=10,
    minimum_requests=6,
    ejection=5,
    max_ejection=20,
    half_open_trials=1,
)


def test_opens_after_consecutive_failures_and_refuses_until_the_ejection_ends() -> None:
    breaker = CircuitBreaker(SETTINGS)
    assert breaker.record(failed=True, now=0) is None
    assert breaker.record(failed=True, now=0) is None
    assert breaker.record(failed=True, now=0) is BreakerState.OPEN
    assert not breaker.allow(4.9)
    assert breaker.allow(5.0)  # the ejection is over: one trial
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(5.0)  # only one trial at a time


def test_a_successful_trial_closes_it_and_resets_the_ejection() -> None:
    breaker = CircuitBreaker(SETTINGS)
    for _ in range(3):
        breaker.record(failed=True, now=0)
    assert breaker.allow(5)
    assert breaker.record(failed=False, now=5) is BreakerState.CLOSED
    assert breaker.ejections == 0
    for _ in range(3):
        breaker.record(failed=True, now=6)
    assert breaker.open_until() == 6 + 5  # back to the first ejection time


def test_a_failed_trial_reopens_it_for_longer_up_to_the_cap() -> None:
    breaker = CircuitBreaker(SETTINGS)
    for _ in range(3):
        breaker.record(failed=True, now=0)
    now = 0.0
    lengths = []
    for _ in range(4):
        now = breaker.open_until()
        assert breaker.allow(now)
        assert breaker.record(failed=True, now=now) is BreakerState.OPEN
        lengths.append(breaker.open_until() - now)
    assert lengths == [10, 20, 20, 20]


def test_opens_on_failure_rate_with_enough_volume() -> None:
    breaker = CircuitBreaker(SETTINGS)
    pattern = [True, False, True, False, True]  # never three in a row
    for failed in pattern:
        assert breaker.record(failed=failed, now=1) is None  # under the minimum volume
    assert breaker.record(failed=True, now=1) is BreakerState.OPEN  # 4 of 6 failed


def test_old_outcomes_leave_the_window() -> None:
    breaker = CircuitBreaker(SETTINGS)
    for failed in [True, False, True, False, True]:
        breaker.record(failed=failed, now=0)
    # Eleven seconds later those are gone: one more failure is not a rate.
    assert breaker.record(failed=True, now=11) is None
    assert breaker.state is BreakerState.CLOSED


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=60))
def test_never_admits_while_open_and_half_open_trials_are_bounded(
    steps: list[tuple[bool, float]],
) -> None:
    breaker = CircuitBreaker(SETTINGS)
    now = 0.0
    for failed, gap in steps:
        now += gap
        if breaker.state is BreakerState.OPEN and now < breaker.open_until():
            assert not breaker.allow(now)
            continue
        if breaker.allow(now):
            breaker.record(failed=failed, now=now)
        assert breaker.open_until() - now <= SETTINGS.max_ejection + 1e-9


def test_an_open_circuit_whose_ejection_ended_reads_half_open_without_traffic() -> None:
    """The gauge (and the CitadelCircuitOpen alert) read `current`: it stayed at open for
    minutes after the ejection when no request came to try the replica."""
    breaker = CircuitBreaker(SETTINGS)
    for _ in range(3):
        breaker.record(failed=True, now=0)
    assert breaker.current(4.9) is BreakerState.OPEN
    assert breaker.current(5.0) is BreakerState.HALF_OPEN
    assert breaker.state is BreakerState.OPEN  # reading changes nothing


def test_available_ranks_without_taking_the_trial_and_abandon_gives_it_back() -> None:
    breaker = CircuitBreaker(SETTINGS)
    assert breaker.available(0)
    for _ in range(3):
        breaker.record(failed=True, now=0)
    assert not breaker.available(4.9)
    assert breaker.available(5.0)  # the trial is due; asking does not take it
    assert breaker.available(5.0)
    assert breaker.allow(5.0)  # taken
    assert not breaker.available(5.0)
    breaker.abandon()  # its client left without a verdict
    breaker.abandon()  # once too often: never more trials than configured
    assert breaker.available(5.0)
    assert breaker.allow(5.0)
    assert not breaker.allow(5.0)


def test_abandon_outside_a_trial_changes_nothing() -> None:
    breaker = CircuitBreaker(SETTINGS)
    breaker.abandon()
    assert breaker.state is BreakerState.CLOSED
    for _ in range(3):
        breaker.record(failed=True, now=0)
    breaker.abandon()
    assert not breaker.available(4.9)  # still open, with no trial to give back
    assert breaker.allow(5.0)
    assert not breaker.allow(5.0)


# Opens on the failure rate alone (consecutive failures never reach the count), two trials.
RATE_ONLY = SETTINGS.model_copy(update={"consecutive_failures": 100, "half_open_trials": 2})


def record(breaker: CircuitBreaker, outcomes: str, now: float) -> BreakerState | None:
    """`outcomes` as F (failed) and S (succeeded); the last change of state."""
    changed = None
    for outcome in outcomes:
        changed = breaker.record(failed=outcome == "F", now=now) or changed
    return changed


def test_the_failure_rate_opens_at_exactly_its_threshold() -> None:
    assert record(CircuitBreaker(RATE_ONLY), "SSSSFF", now=0) is None  # 2 of 6
    assert record(CircuitBreaker(RATE_ONLY), "SSSFFF", now=0) is BreakerState.OPEN  # 3 of 6
    assert record(CircuitBreaker(RATE_ONLY), "FFFSS", now=0) is None  # too few to judge


def test_the_window_keeps_outcomes_exactly_window_seconds_old() -> None:
    breaker = CircuitBreaker(RATE_ONLY)
    record(breaker, "FFF", now=0)
    assert record(breaker, "SSF", now=10) is BreakerState.OPEN  # t=0 is still inside
    breaker = CircuitBreaker(RATE_ONLY)
    record(breaker, "FFF", now=0)
    assert record(breaker, "SSF", now=10.001) is None  # t=0 has left: 3 outcomes


def test_several_trials_are_counted_given_back_and_decide_once() -> None:
    breaker = CircuitBreaker(RATE_ONLY)
    record(breaker, "SSSFFF", now=0)
    assert breaker.allow(5)
    assert breaker.allow(5)
    assert not breaker.allow(5)  # two trials at most
    breaker.abandon()
    assert breaker.allow(5)  # one came back
    assert not breaker.allow(5)
    assert breaker.record(failed=False, now=5) is BreakerState.CLOSED
    assert breaker.state is BreakerState.CLOSED
    assert breaker.record(failed=True, now=5) is None  # a late trial: counted when closed


def test_a_recovered_replica_starts_counting_failures_from_zero() -> None:
    breaker = CircuitBreaker(SETTINGS)
    record(breaker, "FFF", now=0)
    assert breaker.allow(5)
    assert breaker.record(failed=False, now=5) is BreakerState.CLOSED
    assert record(breaker, "FF", now=6) is None  # not three yet
    assert record(breaker, "F", now=6) is BreakerState.OPEN
