"""How a child is started and supervised: the OTP child spec, in frozen dataclasses."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from actors.kernel.mailbox import Overflow

if TYPE_CHECKING:
    from actors.kernel.actor import Actor


class Restart(StrEnum):
    """When a supervisor restarts a child that exited (OTP restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after a crash, not after a normal stop
    TEMPORARY = "temporary"  # never; the child is removed when it exits


class Strategy(StrEnum):
    """Which children a supervisor restarts when one of them crashes."""

    ONE_FOR_ONE = "one_for_one"  # just the one
    ONE_FOR_ALL = "one_for_all"  # all of them: stop the rest in reverse order, start all in order
    REST_FOR_ONE = "rest_for_one"  # the one and those started after it


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential delay before restarting a child whose failures come from outside
    (an upstream that is down): restarting at once would only spin.

    Attempt n (from 0) waits min(maximum, initial * multiplier**n), less up to `jitter` of it,
    so that replicas that failed together do not restart together. The attempt count resets
    once the child has run for `reset_after` seconds.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("backoff needs 0 <= initial <= maximum and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter; grows geometrically up to `maximum`."""
        return float(min(self.maximum, self.initial * self.multiplier ** min(attempt, 64)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling - ceiling * self.jitter * rng.random()


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    capacity: int = 1024
    overflow: Overflow = Overflow.FAIL


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """Everything a supervisor needs to start, restart and stop one child."""

    name: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    backoff: Backoff | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"child name must be non-empty and contain no '/': {self.name!r}")
        if self.shutdown_timeout <= 0:
            raise ValueError("shutdown_timeout must be positive")
