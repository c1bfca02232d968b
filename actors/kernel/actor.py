"""The base class of every asyncio actor, and the context the kernel hands it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from actors.kernel.errors import UnhandledMessage

if TYPE_CHECKING:
    from actors.kernel.cell import ActorCell
    from actors.kernel.ref import ActorRef


class Actor:
    """One message at a time, state touched only in `receive` and the hooks.

    Lifecycle: `on_start` (before the first message; raising fails the start), `receive` for
    each message, then either `on_stop` (stopped by its supervisor or by itself) or
    `on_failure(exc)` (crashed). A restart builds a fresh instance from the child spec's factory.

    An exception raised by `receive` for an ask goes back to the asker and the actor goes on;
    for a tell it crashes the actor and the supervisor decides.
    """

    _context: ActorContext | None = None

    @property
    def context(self) -> ActorContext:
        if self._context is None:
            raise RuntimeError(f"{type(self).__name__} is not running inside an actor cell")
        return self._context

    async def on_start(self) -> None:
        """Acquire resources. Runs before the first message."""

    async def on_stop(self) -> None:
        """Release resources after a stop (not after a crash: see on_failure)."""

    async def on_failure(self, error: BaseException) -> None:
        """Release resources after a crash. The supervisor decides what happens next."""

    async def receive(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an ask."""
        raise UnhandledMessage(f"{type(self).__name__} has no case for {type(message).__name__}")

    def introspect(self) -> dict[str, Any]:
        """Actor-specific details for the introspection snapshot (JSON-serialisable)."""
        return {}


class SyncActor(Actor):
    """An actor whose every message is handled synchronously, by `handle`.

    Nothing in `handle` can await, so it runs to completion without interleaving. That lets
    the kernel serve an ask to an idle SyncActor (empty mailbox) by calling `handle` directly
    in the asker's task, with no trip through the event loop: the ordering and one-at-a-time
    guarantees are the same as through the mailbox, and the ask costs a function call. The
    hot-path actors (router, backends) are SyncActors.
    """

    def handle(self, message: Any) -> Any:
        raise UnhandledMessage(f"{type(self).__name__} has no case for {type(message).__name__}")

    async def receive(self, message: Any) -> Any:
        return self.handle(message)


class ActorContext:
    """What an actor may do to itself: its ref, child tasks, stopping or failing itself."""

    __slots__ = ("_cell", "_incarnation")

    def __init__(self, cell: ActorCell, incarnation: int) -> None:
        self._cell = cell
        self._incarnation = incarnation

    @property
    def self_ref(self) -> ActorRef:
        return self._cell.ref

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def cell(self) -> ActorCell:
        """The kernel cell; supervisors use it to manage their children's cells."""
        return self._cell

    def spawn_task(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run `coro` as a child task of this actor: cancelled when the actor stops or restarts;
        if it raises, the actor crashes with that error."""
        return self._cell.spawn_task(coro, name=name, incarnation=self._incarnation)

    def stop(self) -> None:
        """Stop normally after the current message (exit reason: normal)."""
        self._cell.request_self_stop(self._incarnation)

    def fail(self, error: BaseException) -> None:
        """Crash this actor with `error` as soon as it is between messages. Safe to call from
        callbacks (a timer, a done-callback) on the actor's event loop."""
        self._cell.post_crash(error, self._incarnation)
