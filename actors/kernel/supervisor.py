"""Supervisor: an actor whose job is to start, watch and restart other actors (OTP semantics).

- Children start in list order, each ready (on_start done) before the next; they stop in
  reverse order, each within its shutdown timeout.
- A child's exit arrives as a system message (`ChildExited`). Restart types decide whether it
  is restarted at all (permanent / transient / temporary); the strategy decides which siblings
  restart with it (one_for_one / one_for_all / rest_for_one).
- More than `intensity` restarts within `period` seconds: the supervisor stops its children
  in reverse order and raises SupervisorGaveUp, which crashes it, and its own parent decides.
- A child spec may carry a Backoff: the restart then waits a jittered, growing delay, during
  which the child's mailbox keeps filling (nothing is lost, within its capacity).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from actors.kernel.actor import Actor
from actors.kernel.cell import ActorCell, ChildExited
from actors.kernel.envelope import SystemMessage
from actors.kernel.errors import ActorStartError, SupervisorGaveUp
from actors.kernel.message import Ask
from actors.kernel.ref import ActorRef
from actors.kernel.snapshot import ActorState
from actors.kernel.spec import ChildSpec, Restart, Strategy

log = structlog.get_logger("actors.kernel")


@dataclass(frozen=True, slots=True)
class StartChild:
    """Ask: add a child at the end of the list and start it. Replies with its ref."""

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class TerminateChild:
    """Ask: stop a child for good and remove it. Its ref raises ActorDead from then on."""

    name: str


@dataclass(frozen=True, slots=True)
class RestartChild(Ask[None]):
    """Ask: an operator's restart of one child (not counted against intensity)."""

    name: str


@dataclass(frozen=True, slots=True)
class WhichChildren:
    """Ask: the children in order, as (name, state) pairs."""


@dataclass(frozen=True, slots=True)
class _RestartRound(SystemMessage):
    epoch: int


class Supervisor(Actor):
    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 10.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if intensity < 0 or period <= 0:
            raise ValueError("supervisor needs intensity >= 0 and period > 0")
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate child names: {names}")
        self._initial = tuple(children)
        self._strategy = strategy
        self._intensity = intensity
        self._period = period
        self._rng = rng or random.Random()
        self._clock = clock
        self._restart_times: deque[float] = deque()
        self._pending: set[str] = set()
        self._attempts: dict[str, int] = {}
        self._epoch = 0
        self._timer: asyncio.Task[None] | None = None

    @property
    def _children(self) -> dict[str, ActorCell]:
        return self.context.cell.children

    # -- lifecycle -----------------------------------------------------------------------

    async def on_start(self) -> None:
        cell = self.context.cell
        for spec in self._initial:
            if spec.name not in cell.children:
                cell.children[spec.name] = self._new_cell(spec)
        started: list[ActorCell] = []
        for child in list(cell.children.values()):
            try:
                await child.start()
            except ActorStartError:
                for done in reversed(started):
                    await done.stop(final=True)
                raise
            started.append(child)

    async def on_stop(self) -> None:
        await self._stop_children(final=True)

    async def on_failure(self, error: BaseException) -> None:
        # Our parent is likely to restart us, and we restart our children then: keep their
        # mailboxes. If it does not, closing our cell closes theirs (ActorCell.close).
        await self._stop_children(final=False)

    def introspect(self) -> dict[str, Any]:
        return {
            "strategy": self._strategy.value,
            "intensity": self._intensity,
            "period_s": self._period,
            "recent_restarts": sum(
                1 for t in self._restart_times if self._clock() - t <= self._period
            ),
        }

    # -- messages ------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        match message:
            case ChildExited():
                await self._child_exited(message)
            case _RestartRound(epoch=epoch):
                if epoch == self._epoch:
                    await self._restart_pending()
            case StartChild(spec=spec):
                return await self._start_child(spec)
            case TerminateChild(name=name):
                await self._terminate_child(name)
            case RestartChild(name=name):
                await self._restart_child(name)
            case WhichChildren():
                return tuple((name, cell.state) for name, cell in self._children.items())
            case _:
                return await super().receive(message)
        return None

    async def _child_exited(self, exited: ChildExited) -> None:
        cell = exited.cell
        stale = (
            self._children.get(cell.name) is not cell
            or exited.incarnation != cell.incarnation
            or cell.state not in (ActorState.FAILED, ActorState.STOPPED)
        )
        if stale:
            return
        crashed = exited.error is not None
        restart = cell.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and not crashed):
            cell.close(cell.state)
            if restart is Restart.TEMPORARY:
                del self._children[cell.name]
            log.info("child_not_restarted", actor=cell.path, restart=restart.value)
            return
        await self._handle_exit(cell, ran=True)

    async def _handle_exit(self, cell: ActorCell, *, ran: bool) -> None:
        """Count the restart, pick the group the strategy restarts, and restart it now or
        after the child's backoff."""
        now = self._clock()
        self._restart_times.append(now)
        while now - self._restart_times[0] > self._period:
            self._restart_times.popleft()
        if len(self._restart_times) > self._intensity:
            log.error(
                "supervisor_gave_up",
                actor=self.context.path,
                intensity=self._intensity,
                period_s=self._period,
                last_child=cell.path,
            )
            await self._stop_children(final=False)
            error = SupervisorGaveUp(
                f"{self.context.path}: more than {self._intensity} restarts in "
                f"{self._period:g}s (last: {cell.path})"
            )
            # Raising crashes us when handling a tell; the posted crash covers an ask too
            # (an operator's RestartChild), so giving up always escalates.
            self.context.fail(error)
            raise error
        group = self._group_of(cell)
        for sibling in reversed(group):
            if sibling is cell:
                continue
            if sibling.spec.restart is Restart.TEMPORARY:
                await sibling.stop(final=True)
                del self._children[sibling.name]
            elif sibling.state in (ActorState.STARTING, ActorState.RUNNING):
                await sibling.stop(final=False)
        for member in group:
            if member.name in self._children:
                member.mark_restarting()
                self._pending.add(member.name)
        delay = self._backoff_delay(cell, ran=ran)
        if delay <= 0:
            await self._restart_pending()
            return
        self._epoch += 1
        if self._timer is not None:
            self._timer.cancel()
        log.info("child_restart_scheduled", actor=cell.path, delay_s=round(delay, 3))
        self._timer = self.context.spawn_task(
            self._fire_after(delay, _RestartRound(self._epoch)), name="restart-timer"
        )

    def _group_of(self, cell: ActorCell) -> list[ActorCell]:
        children = list(self._children.values())
        if self._strategy is Strategy.ONE_FOR_ONE:
            return [cell]
        if self._strategy is Strategy.ONE_FOR_ALL:
            return children
        return children[children.index(cell) :]

    def _backoff_delay(self, cell: ActorCell, *, ran: bool) -> float:
        backoff = cell.spec.backoff
        if backoff is None:
            return 0.0
        if ran and time.monotonic() - cell.started_at >= backoff.reset_after:
            self._attempts[cell.name] = 0
        attempt = self._attempts.get(cell.name, 0)
        self._attempts[cell.name] = attempt + 1
        return backoff.delay(attempt, self._rng)

    async def _fire_after(self, delay: float, message: SystemMessage) -> None:
        await asyncio.sleep(delay)
        self.context.cell.mailbox.put_system(message)

    async def _restart_pending(self) -> None:
        """Start every child awaiting a restart, in list order. A child that fails to start
        is handled like a crash, which may widen the group and reschedule."""
        for cell in list(self._children.values()):
            if cell.name not in self._pending:
                continue
            self._pending.discard(cell.name)
            cell.restarts += 1
            try:
                await cell.start()
            except ActorStartError:
                await self._handle_exit(cell, ran=False)
                return
            log.info("actor_restarted", actor=cell.path, restarts=cell.restarts)

    async def _start_child(self, spec: ChildSpec) -> ActorRef:
        if spec.name in self._children:
            raise ValueError(f"{self.context.path} already has a child named {spec.name!r}")
        cell = self._new_cell(spec)
        self._children[spec.name] = cell
        try:
            await cell.start()
        except ActorStartError:
            del self._children[spec.name]
            cell.close(ActorState.FAILED)
            raise
        return cell.ref

    async def _terminate_child(self, name: str) -> None:
        cell = self._children.pop(name, None)
        if cell is None:
            raise LookupError(f"{self.context.path} has no child named {name!r}")
        self._pending.discard(name)
        await cell.stop(final=True)

    async def _restart_child(self, name: str) -> None:
        cell = self._children.get(name)
        if cell is None:
            raise LookupError(f"{self.context.path} has no child named {name!r}")
        await cell.stop(final=False)
        self._pending.discard(name)
        cell.restarts += 1
        try:
            await cell.start()
        except ActorStartError:
            await self._handle_exit(cell, ran=False)
        log.info("actor_restarted_by_operator", actor=cell.path)

    async def _stop_children(self, *, final: bool) -> None:
        self._pending.clear()
        for cell in reversed(list(self._children.values())):
            await cell.stop(final=final)

    def _new_cell(self, spec: ChildSpec) -> ActorCell:
        parent = self.context.cell
        return ActorCell(spec, parent=parent, exit_listener=parent.mailbox.put_system)
