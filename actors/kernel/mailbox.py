"""A bounded mailbox: user envelopes under a capacity, system signals ahead of them.

Built on deques and bare futures rather than `asyncio.Queue`: the hot path (one put, one get)
is a couple of attribute lookups and, when the consumer sleeps, one `set_result`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from enum import StrEnum

from actors.kernel.envelope import Crash, Envelope, Stop, SystemMessage
from actors.kernel.errors import ActorDead, MailboxFull


class Overflow(StrEnum):
    """What a sender meets when the mailbox is full."""

    FAIL = "fail"  # tell/ask raise MailboxFull at once: load is shed at the edge
    WAIT = "wait"  # tell/ask wait for room: back-pressure on the sender


class Mailbox:
    """Single consumer, many producers, one event loop."""

    __slots__ = ("_closed", "_getter", "_items", "_putters", "_system", "capacity", "overflow")

    def __init__(self, capacity: int, overflow: Overflow) -> None:
        if capacity < 1:
            raise ValueError("mailbox capacity must be at least 1")
        self.capacity = capacity
        self.overflow = overflow
        self._items: deque[Envelope] = deque()
        self._system: deque[SystemMessage] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed: ActorDead | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def idle(self) -> bool:
        """Nothing waits: no user message and no system signal."""
        return not self._items and not self._system

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def put_nowait(self, envelope: Envelope) -> None:
        if self._closed is not None:
            raise self._closed
        if len(self._items) >= self.capacity:
            raise MailboxFull(f"mailbox full ({self.capacity} messages)")
        self._items.append(envelope)
        self._wake_getter()

    async def put(self, envelope: Envelope) -> None:
        """Put, honouring the overflow policy: wait for room (WAIT) or raise (FAIL)."""
        if self.overflow is Overflow.FAIL or len(self._items) < self.capacity:
            self.put_nowait(envelope)
            return
        while len(self._items) >= self.capacity:
            if self._closed is not None:
                raise self._closed
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Our wake-up may have been meant for the queue: pass it on.
                if not waiter.cancelled() and waiter.done():
                    self._wake_putter()
                raise
        self.put_nowait(envelope)

    def put_system(self, message: SystemMessage) -> None:
        """System signals bypass capacity and the closed state: the kernel must always get
        through (a stop, a crash, a child's exit)."""
        self._system.append(message)
        self._wake_getter()

    async def get(self) -> Envelope | SystemMessage:
        while not self._system and not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getter = getter
            try:
                await getter
            finally:
                self._getter = None
        if self._system:
            return self._system.popleft()
        envelope = self._items.popleft()
        if self._putters:
            self._wake_putter()
        return envelope

    def close(self, reason: ActorDead) -> None:
        """Refuse new envelopes and fail every pending ask and waiting sender with `reason`."""
        self._closed = reason
        while self._items:
            reply = self._items.popleft().reply
            if reply is not None and not reply.done():
                reply.set_exception(reason)
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # it re-checks, sees the mailbox closed, and raises

    def reopen(self) -> None:
        self._closed = None

    def drop_control_signals(self) -> None:
        """Forget stop and crash signals left by a previous instance; keep the rest (notices,
        children's exits), which the next instance must still see."""
        self._system = deque(m for m in self._system if not isinstance(m, Stop | Crash))

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def _wake_putter(self) -> None:
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
