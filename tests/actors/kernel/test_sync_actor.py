"""SyncActor: asks to an idle actor are served in the asker's task, with the same ordering and
exclusivity as the mailbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from actors.kernel import (
    ActorDead,
    ActorSystem,
    Ask,
    ChildSpec,
    Supervisor,
    SyncActor,
    ask_settled,
)


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


@dataclass(frozen=True)
class Later(Ask[str]):
    """Ask: answered with a future the test settles."""


class Deferring(SyncActor):
    def __init__(self) -> None:
        self.replies: list[asyncio.Future[str]] = []

    def handle(self, message: Any) -> Any:
        if isinstance(message, Later):
            reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self.replies.append(reply)
            return reply
        return super().handle(message)


async def test_a_reply_settled_as_its_asker_is_cancelled_is_handed_to_abandoned(
    system: ActorSystem,
) -> None:
    """The reply is settled, and the asker cancelled before it resumes: the answer never
    reaches it. `abandoned` gets it (an admission would hold a slot no one settles); a reply
    the asker reads, or gives up on before it is settled, is not handed over."""
    actor = Deferring()
    ref = await system.spawn(ChildSpec("deferring", lambda: actor))
    lost: list[str] = []
    asker = asyncio.ensure_future(ask_settled(ref, Later(), timeout=5, abandoned=lost.append))
    await asyncio.sleep(0)  # the ask is made: the asker waits on the reply
    actor.replies[0].set_result("slot 1")
    asker.cancel()  # in the same turn: it has not resumed
    with pytest.raises(asyncio.CancelledError):
        await asker
    assert lost == ["slot 1"]

    read = asyncio.ensure_future(ask_settled(ref, Later(), timeout=5, abandoned=lost.append))
    await asyncio.sleep(0)
    actor.replies[1].set_result("slot 2")
    assert await read == "slot 2"
    early = asyncio.ensure_future(ask_settled(ref, Later(), timeout=5, abandoned=lost.append))
    await asyncio.sleep(0)
    early.cancel()
    with pytest.raises(asyncio.CancelledError):
        await early
    assert actor.replies[2].cancelled()  # what the actor sees: its reply was given up on
    assert lost == ["slot 1"]
