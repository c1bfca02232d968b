"""What travels through a mailbox: user envelopes and the kernel's own system signals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


class Envelope:
    """A user message and, for an ask, the future its reply goes to."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: asyncio.Future[Any] | None) -> None:
        self.message = message
        self.reply = reply


class SystemMessage:
    """Base of messages the kernel delivers ahead of user messages and outside capacity.

    Subclasses that the kernel does not consume itself (supervision signals such as a child's
    exit) are handed to `receive` like a tell: an exception there crashes the actor.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Stop(SystemMessage):
    """Finish the current message, run on_stop, and end the run loop."""


@dataclass(frozen=True, slots=True)
class Crash(SystemMessage):
    """Crash the actor with this exception (a child task failed, or `context.fail` was called).

    `incarnation` ties the signal to the instance it was raised for, so a late signal never
    crashes the instance that replaced it.
    """

    error: BaseException
    incarnation: int


@dataclass(frozen=True, slots=True)
class Notice(SystemMessage):
    """A user message that settles work the actor already admitted (a lease's release).

    It bypasses the mailbox capacity: refusing it would leak what was admitted. It is handled
    like a tell (an exception crashes the actor), ahead of queued user messages.
    """

    message: object
