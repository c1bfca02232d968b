"""Token budgets: a number of tokens per calendar period (a day, a week from Monday, a month)
in a configured time zone, for a key or a model.

The limiter keeps each subject's spend in the period (in this process, or in Redis with the
other limits, in the same atomic admission): admission reserves the request's estimate,
completion reconciles it with what was used, as tokens per minute do. A period's spend
starts from the usage ledger's (`seed`), so a restart of Redis or of the gateway does not
give a key its budget back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

PeriodKind = Literal["day", "week", "month"]


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int = Field(ge=1, description="prompt and completion tokens per period")
    period: PeriodKind = "month"


@dataclass(frozen=True, slots=True)
class Period:
    id: str  # "day:2026-12-03", "week:2026-11-30", "month:2026-12": part of the state's key
    start: float  # unix time
    end: float

    @property
    def ends_at(self) -> str:
        """When it ends, in UTC, as ISO 8601 with a Z (what the 429 and /admin/keys show)."""
        return datetime.fromtimestamp(self.end, UTC).isoformat().replace("+00:00", "Z")


def period_of(kind: PeriodKind, zone: ZoneInfo, now: float) -> Period:
    """The calendar period holding `now`, in `zone`."""
    local = datetime.fromtimestamp(now, zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        start, end = day, day + timedelta(days=1)
    elif kind == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    # Wall-clock arithmetic in the zone: midnight there, whatever the offset that day.
    return Period(f"{kind}:{start.date().isoformat()}", start.timestamp(), end.timestamp())


class BudgetClock:
    """The current period of each kind, recomputed only when one ends (a request asks for
    it on every admission of a subject with a budget)."""

    __slots__ = ("_current", "zone")

    def __init__(self, zone: str = "UTC") -> None:
        self.zone = ZoneInfo(zone)
        self._current: dict[PeriodKind, Period] = {}

    def period(self, kind: PeriodKind, now: float) -> Period:
        current = self._current.get(kind)
        if current is None or not current.start <= now < current.end:
            current = self._current[kind] = period_of(kind, self.zone, now)
        return current
