"""ActorRef: the only way to talk to an actor. It addresses a cell, never an instance, so it
stays valid across restarts."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from actors.kernel.envelope import Envelope, Notice
from actors.kernel.errors import AskTimeout
from actors.kernel.mailbox import Overflow

if TYPE_CHECKING:
    from actors.kernel.cell import ActorCell
    from actors.kernel.snapshot import ActorSnapshot

DEFAULT_ASK_TIMEOUT = 5.0


def _expire(reply: asyncio.Future[Any], path: str, timeout: float) -> None:
    if not reply.done():
        reply.set_exception(AskTimeout(f"{path} did not reply within {timeout:g}s"))


class ActorRef:
    __slots__ = ("_cell",)

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def cell(self) -> ActorCell:
        return self._cell

    def tell_nowait(self, message: Any) -> None:
        """Fire and forget, never waiting: raises MailboxFull when there is no room (whatever
        the overflow policy) and ActorDead when the actor is stopped for good."""
        self._cell.mailbox.put_nowait(Envelope(message, None))

    async def tell(self, message: Any) -> None:
        """Fire and forget. A full mailbox raises MailboxFull (overflow=fail) or makes this
        wait for room (overflow=wait)."""
        await self._cell.mailbox.put(Envelope(message, None))

    def notify(self, message: Any) -> None:
        """Deliver a message that settles admitted work (a release): never refused for capacity,
        handled ahead of queued messages, like a tell. Dropped silently if the actor is stopped
        for good, since nothing is left to settle."""
        cell = self._cell
        mailbox = cell.mailbox
        direct = cell.direct
        if direct is not None and mailbox.idle:
            # An idle SyncActor settles it here, now (see SyncActor). A failure is still a
            # crash for the supervisor, exactly as if the notice had gone through the mailbox.
            cell.messages_handled += 1
            try:
                direct(message)
            except Exception as exc:
                cell.post_crash(exc, cell.incarnation)
            return
        if not mailbox.closed:
            mailbox.put_system(Notice(message))

    async def ask(self, message: Any, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        """Send and await the reply. The actor's exception, if it raised, is raised here.

        Raises AskTimeout after `timeout` seconds (time spent waiting for mailbox room
        included); an ask that times out before the actor reaches it is never handled.
        """
        cell = self._cell
        direct = cell.direct
        if direct is not None and cell.mailbox.idle:
            # An idle SyncActor: handle it here, now; the same order and exclusivity as the
            # mailbox gives, without two trips through the event loop.
            cell.messages_handled += 1
            return direct(message)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        envelope = Envelope(message, reply)
        mailbox = cell.mailbox
        if timeout is None:
            await mailbox.put(envelope)
            return await reply
        if mailbox.overflow is Overflow.FAIL or len(mailbox) < mailbox.capacity:
            mailbox.put_nowait(envelope)
        else:
            deadline = loop.time() + timeout
            try:
                async with asyncio.timeout(timeout):
                    await mailbox.put(envelope)
            except TimeoutError:
                raise AskTimeout(f"{self.path} had no mailbox room within {timeout:g}s") from None
            timeout = max(0.0, deadline - loop.time())
        handle = loop.call_later(timeout, _expire, reply, self._cell.path, timeout)
        try:
            return await reply
        finally:
            handle.cancel()

    def snapshot(self) -> ActorSnapshot:
        """Read directly from the cell, not through the mailbox: introspection must answer for
        a stuck or restarting actor, which is exactly when an operator needs it."""
        return self._cell.snapshot()
