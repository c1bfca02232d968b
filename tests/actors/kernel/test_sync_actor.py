"""SyncActor: asks to an idle actor are served in the asker's task, with the same ordering and
exclusivity as the mailbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from actors.kernel import ActorDead, ActorSystem, ChildSpec, Supervisor, SyncActor


@dataclass(frozen=True, slots=True)
class Add:
    value: int


@dataclass(frozen=True, slots=True)
class Total:
    pass


@dataclass(frozen=True, slots=True)
class Fail:
    pass


class Counter(SyncActor):
    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.total = 0
        self.log = log

    def handle(self, message: Any) -> Any:
        match message:
            case Add(value=value):
                self.total += value
                self.log.append(("add", value))
                return self.total
            case Total():
                return self.total
            case Fail():
                raise ValueError("refused")
        return super().handle(message)


async def test_ask_to_an_idle_sync_actor_completes_without_yielding(system: ActorSystem) -> None:
    log: list[tuple[str, int]] = []
    ref = await system.spawn(ChildSpec("counter", lambda: Counter(log)))
    asker = asyncio.ensure_future(ref.ask(Add(2)))
    # A direct ask finishes in the asker's first step: one loop pass is enough.
    await asyncio.sleep(0)
    assert asker.done()
    assert asker.result() == 2
    assert ref.snapshot().messages_handled == 1


async def test_queued_tells_are_handled_before_a_later_ask(system: ActorSystem) -> None:
    log: list[tuple[str, int]] = []
    ref = await system.spawn(ChildSpec("counter", lambda: Counter(log)))
    for value in (1, 2, 3):
        await ref.tell(Add(value))
    assert await ref.ask(Total()) == 6  # not idle: the ask queued behind the tells
    assert log == [("add", 1), ("add", 2), ("add", 3)]


async def test_direct_ask_error_goes_to_the_asker_and_the_actor_survives(
    system: ActorSystem,
) -> None:
    log: list[tuple[str, int]] = []
    ref = await system.spawn(ChildSpec("counter", lambda: Counter(log)))
    await ref.ask(Add(5))
    with pytest.raises(ValueError, match="refused"):
        await ref.ask(Fail())
    assert await ref.ask(Total()) == 5
    assert ref.snapshot().restarts == 0


async def test_tell_error_still_crashes_a_sync_actor(system: ActorSystem) -> None:
    log: list[tuple[str, int]] = []
    await system.spawn(
        ChildSpec("sup", lambda: Supervisor([ChildSpec("counter", lambda: Counter(log))]))
    )
    ref = system.lookup("sup/counter")
    await ref.ask(Add(5))
    await ref.tell(Fail())
    assert await ref.ask(Total()) == 0  # queued behind the crash: a fresh instance answers
    assert ref.snapshot().restarts == 1


async def test_no_direct_ask_to_a_stopped_sync_actor(system: ActorSystem) -> None:
    log: list[tuple[str, int]] = []
    ref = await system.spawn(ChildSpec("counter", lambda: Counter(log)))
    await system.shutdown()
    assert ref.cell.direct is None
    with pytest.raises(ActorDead):
        await ref.ask(Total())


async def test_direct_notice_failure_crashes_the_actor_for_its_supervisor(
    system: ActorSystem,
) -> None:
    log: list[tuple[str, int]] = []
    await system.spawn(
        ChildSpec("sup", lambda: Supervisor([ChildSpec("counter", lambda: Counter(log))]))
    )
    ref = system.lookup("sup/counter")
    ref.notify(Add(3))  # idle: settled at once
    assert log == [("add", 3)]
    ref.notify(Fail())  # raises inside handle: the actor crashes and is restarted
    assert await ref.ask(Total()) == 0  # queued behind the crash signal: a fresh instance
    snapshot = ref.snapshot()
    assert snapshot.restarts == 1
    assert snapshot.last_failure is not None
    assert snapshot.last_failure.type == "ValueError"
