"""The rate-limit arithmetic of `actors.limiter.local`, exact to the second and the token, on
a clock the test holds (the Redis scripts run the same arithmetic: test_limits_redis*.py)."""

from __future__ import annotations

from dataclasses import astuple

import pytest

from actors.limiter.local import (
    LimitSpec,
    LocalLimits,
    Quota,
    Subject,
    Verdict,
    gcra,
    quota_of,
    refill,
)

NOW = 1000.0


def key(**spec: int) -> Subject:
    return Subject("key:k", LimitSpec(**spec))


def model(**spec: int) -> Subject:
    return Subject("model:m", LimitSpec(**spec))


def test_a_spec_says_whether_it_limits_anything() -> None:
    assert not LimitSpec().any
    assert LimitSpec(rpm=1).any
    assert LimitSpec(tpm=1).any
    assert LimitSpec(max_concurrent=1).any


def test_gcra_allows_a_burst_of_rpm_then_one_per_interval() -> None:
    tat, admitted = 0.0, 0
    while True:
        allowed, new_tat, wait = gcra(tat, NOW, 60)
        if not allowed:
            break
        assert wait == 0.0
        assert new_tat == max(tat, NOW) + 1.0
        tat, admitted = new_tat, admitted + 1
    assert admitted == 60  # the 60th lands exactly on the window's edge, and is allowed
    assert (new_tat, wait) == (tat, 1.0)  # refused: the tat unchanged, one interval to wait
    assert gcra(tat, NOW + 1.0, 60) == (True, tat + 1.0, 0.0)


def test_gcra_starts_from_now_when_the_subject_was_idle() -> None:
    assert gcra(NOW - 500, NOW, 30) == (True, NOW + 2.0, 0.0)


def test_refill_fills_at_tpm_per_minute_up_to_tpm() -> None:
    assert refill(None, 0.0, NOW, 120) == 120.0
    assert refill(0.0, NOW, NOW + 30, 120) == 60.0
    assert refill(-60.0, NOW, NOW + 30, 120) == 0.0  # a debt is paid off first
    assert refill(100.0, NOW, NOW + 600, 120) == 120.0


def test_quota_of_requests_and_tokens() -> None:
    spec = LimitSpec(rpm=60, tpm=1000)
    assert astuple(quota_of(spec, NOW + 10, 250.7, NOW)) == pytest.approx(
        (60, 50, 10.0, 1000, 250, 44.958)
    )
    assert quota_of(spec, NOW - 5, None, NOW) == Quota(60, 60, 0.0, 1000, 1000, 0.0)
    assert astuple(quota_of(spec, NOW + 70, -10.0, NOW)) == pytest.approx(
        (60, 0, 70.0, 1000, 0, 60.6)
    )
    assert quota_of(LimitSpec(), NOW + 10, 5.0, NOW) == Quota(None, 0, 0.0, None, 0, 0.0)


@pytest.mark.parametrize("now", [196.001, 1e3 + 0.1, 1_733_354_476.123456])
def test_the_requests_left_survive_the_clock_s_rounding(now: float) -> None:
    """At some clock readings (196.001 s after boot) `now + 60 - (now + 30)` is 29.99...:
    a first request under rpm 2 was told 0 left, and the next was admitted anyway. Clock
    readings of every magnitude, the monotonic one's and the epoch Redis tells."""
    limits = LocalLimits()
    subjects = (Subject("key:a", LimitSpec(rpm=2)),)
    first = limits.admit(subjects, 1, now)
    assert first.quota is not None
    assert first.quota.remaining_requests == 1
    assert quota_of(LimitSpec(rpm=2), now + 30.0, None, now).remaining_requests == 1
    for step in range(1000):  # and across a spread of readings near it
        later = now + step * 0.000_123
        assert quota_of(LimitSpec(rpm=2), later + 30.0, None, later).remaining_requests == 1


def test_tokens_are_charged_up_front_and_a_refusal_says_how_long_to_wait() -> None:
    limits = LocalLimits()
    first = limits.admit((key(tpm=120),), 100, NOW)
    assert first.allowed
    assert first.quota is not None
    assert first.quota.remaining_tokens == 20
    refused = limits.admit((key(tpm=120),), 100, NOW)
    assert (refused.allowed, refused.kind, refused.subject) == (False, "tokens", "key:k")
    assert refused.retry_after == pytest.approx(40.0)  # 80 tokens at 2 a second
    assert not limits.admit((key(tpm=120),), 100, NOW + 39.9).allowed
    assert limits.admit((key(tpm=120),), 100, NOW + 40.0).allowed


def test_a_request_larger_than_the_limit_waits_for_a_full_bucket_only() -> None:
    limits = LocalLimits()
    assert limits.admit((key(tpm=100),), 500, NOW).allowed  # charged 100, not 500
    refused = limits.admit((key(tpm=100),), 500, NOW + 30)
    assert refused.retry_after == pytest.approx(30.0)
    assert limits.admit((key(tpm=100),), 500, NOW + 60).allowed


def test_requests_per_minute_refusal_names_its_kind_and_wait() -> None:
    limits = LocalLimits()
    assert limits.admit((key(rpm=1),), 0, NOW).allowed
    refused = limits.admit((key(rpm=1),), 0, NOW + 15)
    assert (refused.allowed, refused.kind, refused.subject) == (False, "requests", "key:k")
    assert refused.retry_after == pytest.approx(45.0)
    assert refused.quota == Quota(1, 0, 45.0, None, 0, 0.0)  # told even when refused


def test_concurrency_slots_are_taken_and_given_back() -> None:
    limits = LocalLimits()
    subjects = (key(max_concurrent=2),)
    assert limits.admit(subjects, 0, NOW).allowed
    assert limits.admit(subjects, 0, NOW).allowed
    assert limits.in_flight() == {"key:k": 2}
    assert limits.admit(subjects, 0, NOW) == Verdict(
        False, "concurrency", "key:k", 1.0, Quota(None, 0, 0.0, None, 0, 0.0)
    )
    limits.settle(subjects, 0, 0, NOW)
    assert limits.in_flight() == {"key:k": 1}
    assert limits.admit(subjects, 0, NOW).allowed
    for _ in range(5):  # a settlement too many never makes room that is not there
        limits.settle(subjects, 0, 0, NOW)
    assert limits.in_flight() == {}
    assert limits.admit(subjects, 0, NOW).allowed
    assert limits.admit(subjects, 0, NOW).allowed
    assert not limits.admit(subjects, 0, NOW).allowed


def test_all_subjects_are_charged_together_or_none_is() -> None:
    limits = LocalLimits()
    busy_model = model(rpm=1, tpm=1000, max_concurrent=5)
    assert limits.admit((key(rpm=5), busy_model), 10, NOW).allowed
    other_key = Subject("key:other", LimitSpec(rpm=1, tpm=100, max_concurrent=1))
    refused = limits.admit((other_key, busy_model), 10, NOW)
    assert (refused.kind, refused.subject) == ("requests", "model:m")
    # Nothing was charged to the key the model refused: its whole minute is still there.
    assert refused.quota == Quota(1, 1, 0.0, 100, 100, 0.0)
    assert limits.in_flight() == {"model:m": 1}
    assert limits.admit((other_key,), 100, NOW).allowed


def test_the_quota_is_the_first_subjects_and_absent_without_subjects() -> None:
    limits = LocalLimits()
    verdict = limits.admit((key(rpm=10, tpm=50), model(rpm=2)), 20, NOW)
    assert verdict.quota == Quota(10, 9, 6.0, 50, 30, 24.0)
    assert limits.admit((), 20, NOW) == Verdict(True)


def test_settling_refunds_the_estimate_and_charges_a_debt() -> None:
    limits = LocalLimits()
    subjects = (key(tpm=1000),)
    limits.admit(subjects, 500, NOW)
    limits.settle(subjects, 500, 100, NOW)  # used 100 of the 500 charged
    assert quota(limits, subjects).remaining_tokens == 900
    limits.admit(subjects, 100, NOW)
    limits.settle(subjects, 100, 600, NOW)  # used more than estimated: a debt
    assert quota(limits, subjects).remaining_tokens == 300
    limits.settle(subjects, 2000, 0, NOW)  # a refund never exceeds the bucket
    assert quota(limits, subjects).remaining_tokens == 1000
    limits.admit(subjects, 5000, NOW)  # charged the whole bucket, not 5000
    limits.settle(subjects, 5000, 800, NOW)  # so the refund is the bucket, not 5000
    assert quota(limits, subjects).remaining_tokens == 200


def test_a_settlement_brings_the_bucket_up_to_date_first() -> None:
    limits = LocalLimits()
    subjects = (key(tpm=600),)
    limits.admit(subjects, 600, NOW)  # empty
    limits.settle(subjects, 600, 600, NOW + 30)  # 300 refilled meanwhile, nothing refunded
    assert quota(limits, subjects, NOW + 30).remaining_tokens == 300


def quota(limits: LocalLimits, subjects: tuple[Subject, ...], now: float = NOW) -> Quota:
    """The quota as the next admission would report it (an admission of nothing)."""
    verdict = limits.admit(
        tuple(Subject(s.name, LimitSpec(tpm=s.spec.tpm)) for s in subjects), 0, now
    )
    assert verdict.quota is not None
    return verdict.quota
