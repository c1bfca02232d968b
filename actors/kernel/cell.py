"""The cell: the long-lived home of one actor.

A cell owns the mailbox, the counters and the child tasks; the actor instance inside it is
replaceable. Refs point at cells, so a restart (a new instance in the same cell, the same
mailbox) is invisible to everyone holding a ref.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from actors.kernel.actor import Actor, ActorContext, SyncActor
from actors.kernel.envelope import Crash, Envelope, Notice, Stop, SystemMessage
from actors.kernel.errors import ActorDead, ActorStartError
from actors.kernel.mailbox import Mailbox
from actors.kernel.ref import ActorRef
from actors.kernel.snapshot import ActorSnapshot, ActorState, FailureInfo
from actors.kernel.spec import ChildSpec

log = structlog.get_logger("actors.kernel")

_LIVE = (ActorState.STARTING, ActorState.RUNNING)


@dataclass(frozen=True, slots=True)
class ChildExited(SystemMessage):
    """A child's instance ended by itself: `error` is the crash, or None for a normal stop.

    Delivered to the parent's mailbox as a system message. Exits that the parent caused (it
    stopped the child) are never reported: the parent already knows.
    """

    cell: ActorCell
    incarnation: int
    error: BaseException | None


class ActorCell:
    __slots__ = (
        "_class_name",
        "_exit_listener",
        "_instance",
        "_stopping_by_parent",
        "_task",
        "_tasks",
        "children",
        "direct",
        "incarnation",
        "last_failure",
        "mailbox",
        "messages_handled",
        "name",
        "parent",
        "path",
        "ref",
        "restarts",
        "spec",
        "started_at",
        "state",
    )

    def __init__(
        self,
        spec: ChildSpec,
        *,
        parent: ActorCell | None,
        exit_listener: Callable[[ChildExited], None],
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.parent = parent
        self.path: str = spec.name if parent is None else f"{parent.path}/{spec.name}"
        self.mailbox = Mailbox(spec.mailbox.capacity, spec.mailbox.overflow)
        self.ref = ActorRef(self)
        # Children persist across this cell's restarts so their refs stay valid; a supervisor
        # manages them, other actors never have any.
        self.children: dict[str, ActorCell] = {}
        self.state = ActorState.NEW
        self.incarnation = 0
        self.messages_handled = 0
        self.restarts = 0
        self.last_failure: FailureInfo | None = None
        self.started_at = 0.0
        self._exit_listener = exit_listener
        self._instance: Actor | None = None
        # The running SyncActor's handle, for asks served in the asker's task (see SyncActor);
        # None whenever the actor is not running or is not a SyncActor.
        self.direct: Callable[[Any], Any] | None = None
        self._class_name = getattr(spec.factory, "__name__", type(spec.factory).__name__)
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping_by_parent = False

    def __repr__(self) -> str:
        return f"<ActorCell {self.path} {self.state.value}>"

    @property
    def instance(self) -> Actor | None:
        return self._instance

    # -- lifecycle, driven by the parent ------------------------------------------------------

    async def start(self) -> None:
        """Build a fresh instance, run its on_start, then serve the (kept) mailbox.

        Raises ActorStartError if on_start raises; the cell is then FAILED and nobody is
        notified: the caller (the parent) handles it.
        """
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"{self.path} is already running")
        self.incarnation += 1
        incarnation = self.incarnation
        self._stopping_by_parent = False
        self.mailbox.drop_control_signals()
        self.mailbox.reopen()
        self.state = ActorState.STARTING
        instance = self.spec.factory()
        instance._context = ActorContext(self, incarnation)
        self._instance = instance
        self._class_name = type(instance).__name__
        try:
            await instance.on_start()
        except BaseException as exc:
            await self._cancel_tasks()
            self._instance = None
            self.state = ActorState.FAILED
            if not isinstance(exc, Exception):
                raise
            self.last_failure = FailureInfo.of(exc)
            log.error("actor_start_failed", actor=self.path, exc_info=exc)
            raise ActorStartError(f"{self.path} failed to start: {exc!r}") from exc
        self.state = ActorState.RUNNING
        self.started_at = time.monotonic()
        if isinstance(instance, SyncActor):
            self.direct = instance.handle
        self._task = asyncio.get_running_loop().create_task(
            self._run(instance, incarnation), name=f"actor:{self.path}"
        )

    async def stop(self, *, final: bool) -> None:
        """Stop the running instance: let it finish its current message, run on_stop, and
        cancel it if that takes longer than the spec's shutdown timeout.

        final=True: the cell is STOPPED and its mailbox closed (pending asks fail with
        ActorDead). final=False: the cell is RESTARTING and its mailbox kept for the next
        instance.
        """
        self.direct = None
        task = self._task
        if task is not None and not task.done():
            self._stopping_by_parent = True
            self.state = ActorState.STOPPING
            self.mailbox.put_system(Stop())
            done, _ = await asyncio.wait({task}, timeout=self.spec.shutdown_timeout)
            if not done:
                log.warning(
                    "actor_killed", actor=self.path, shutdown_timeout=self.spec.shutdown_timeout
                )
                task.cancel()
                await asyncio.wait({task})
        self._task = None
        self._instance = None
        if final:
            self.close(ActorState.STOPPED)
        else:
            self.state = ActorState.RESTARTING

    def close(self, state: ActorState) -> None:
        """The cell will not run again (unless a parent restart reopens it): fail what waits,
        here and in the whole subtree, so that no ask anywhere below hangs."""
        self.state = state
        self.mailbox.close(ActorDead(f"actor {self.path} is {state.value}"))
        for child in self.children.values():
            if not child.mailbox.closed:
                child.close(ActorState.STOPPED)

    def mark_restarting(self) -> None:
        self.state = ActorState.RESTARTING

    # -- requests from the actor itself ---------------------------------------------------

    def request_self_stop(self, incarnation: int) -> None:
        if incarnation == self.incarnation and self.state in _LIVE:
            self.mailbox.put_system(Stop())

    def post_crash(self, error: BaseException, incarnation: int) -> None:
        if incarnation == self.incarnation and self.state in _LIVE:
            self.mailbox.put_system(Crash(error, incarnation))

    def spawn_task(
        self, coro: Coroutine[Any, Any, Any], *, name: str, incarnation: int
    ) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.path}:{name}")
        self._tasks.add(task)
        task.add_done_callback(partial(self._child_task_done, incarnation))
        return task

    def _child_task_done(self, incarnation: int, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.post_crash(error, incarnation)

    # -- the run loop ------------------------------------------------------------------

    async def _run(self, instance: Actor, incarnation: int) -> None:
        try:
            error = await self._serve(instance, incarnation)
        except asyncio.CancelledError:
            self.direct = None
            await self._cancel_tasks()
            raise
        self.direct = None
        if error is None:
            await self._exit_normally(instance, incarnation)
        else:
            await self._exit_crashed(instance, incarnation, error)

    async def _serve(self, instance: Actor, incarnation: int) -> BaseException | None:
        """Handle messages until a stop (returns None) or a crash (returns the error)."""
        mailbox = self.mailbox
        receive = instance.receive
        while True:
            item = await mailbox.get()
            if type(item) is Envelope:
                reply = item.reply
                if reply is None:
                    try:
                        await receive(item.message)
                    except Exception as exc:
                        self.messages_handled += 1
                        return exc
                elif reply.done():
                    continue  # the asker timed out or went away: do not act on its behalf
                else:
                    try:
                        result = await receive(item.message)
                    except Exception as exc:
                        if not reply.done():
                            reply.set_exception(exc)
                    else:
                        if not reply.done():
                            reply.set_result(result)
                self.messages_handled += 1
            elif type(item) is Notice:
                try:
                    await receive(item.message)
                except Exception as exc:
                    self.messages_handled += 1
                    return exc
                self.messages_handled += 1
            elif type(item) is Stop:
                return None
            elif type(item) is Crash:
                if item.incarnation == incarnation:
                    return item.error
            else:
                try:
                    await receive(item)
                except Exception as exc:
                    return exc
                self.messages_handled += 1

    async def _exit_normally(self, instance: Actor, incarnation: int) -> None:
        try:
            await instance.on_stop()
        except Exception as exc:
            log.error("actor_on_stop_failed", actor=self.path, exc_info=exc)
        await self._cancel_tasks()
        if self._stopping_by_parent:
            return  # the parent is awaiting us in stop() and sets the final state
        self._instance = None
        self.state = ActorState.STOPPED
        log.info("actor_stopped", actor=self.path)
        self._exit_listener(ChildExited(self, incarnation, None))

    async def _exit_crashed(self, instance: Actor, incarnation: int, error: BaseException) -> None:
        self.last_failure = FailureInfo.of(error)
        self.state = ActorState.FAILED
        log.error("actor_crashed", actor=self.path, exc_info=error)
        try:
            await instance.on_failure(error)
        except Exception as exc:
            log.error("actor_on_failure_failed", actor=self.path, exc_info=exc)
        await self._cancel_tasks()
        self._instance = None
        if not self._stopping_by_parent:
            self._exit_listener(ChildExited(self, incarnation, error))

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- introspection -------------------------------------------------------------------

    def snapshot(self) -> ActorSnapshot:
        instance = self._instance
        running = self.state is ActorState.RUNNING
        details: dict[str, Any] = {}
        if instance is not None:
            try:
                details = instance.introspect()
            except Exception as exc:  # a broken introspect must not break /admin/actors
                details = {"introspect_error": repr(exc)}
        return ActorSnapshot(
            name=self.name,
            path=self.path,
            actor_class=self._class_name,
            state=self.state,
            mailbox_depth=len(self.mailbox),
            mailbox_capacity=self.mailbox.capacity,
            messages_handled=self.messages_handled,
            restarts=self.restarts,
            last_failure=self.last_failure,
            uptime_s=time.monotonic() - self.started_at if running else 0.0,
            details=details,
            children=tuple(child.snapshot() for child in self.children.values()),
        )
