"""Asks, tells, crashes, refs across restarts, mailboxes and child tasks."""

from __future__ import annotations

import asyncio

import pytest

from actors.kernel import (
    ActorDead,
    ActorRef,
    ActorState,
    ActorSystem,
    AskTimeout,
    ChildSpec,
    MailboxConfig,
    MailboxFull,
    Overflow,
    Supervisor,
    UnhandledMessage,
)
from tests.actors.kernel.helpers import (
    Block,
    Boom,
    Count,
    Echo,
    Halt,
    Recorder,
    SpawnTask,
    Worker,
    worker,
)


async def supervised(system: ActorSystem, *specs: ChildSpec) -> ActorRef:
    return await system.spawn(ChildSpec("root", lambda: Supervisor(specs, intensity=100)))


async def test_ask_returns_the_reply(system: ActorSystem) -> None:
    recorder = Recorder()
    await supervised(system, worker("a", recorder))
    assert await system.lookup("root/a").ask(Echo(42)) == 42


async def test_ask_error_goes_to_the_asker_and_the_actor_survives(system: ActorSystem) -> None:
    recorder = Recorder()
    await supervised(system, worker("a", recorder))
    a = system.lookup("root/a")
    assert await a.ask(Count()) == 1
    with pytest.raises(RuntimeError, match="bad input"):
        await a.ask(Boom("bad input"))
    assert await a.ask(Count()) == 2  # same instance: its state survived
    assert recorder.of("start") == ["a"]
    assert a.snapshot().restarts == 0


async def test_unhandled_message_is_a_type_error_for_the_asker(system: ActorSystem) -> None:
    recorder = Recorder()
    await supervised(system, worker("a", recorder))
    with pytest.raises(UnhandledMessage):
        await system.lookup("root/a").ask(object())


async def test_tell_error_crashes_restarts_same_ref_and_keeps_the_mailbox(
    system: ActorSystem,
) -> None:
    recorder = Recorder()
    await supervised(system, worker("a", recorder))
    a = system.lookup("root/a")
    entered, release = asyncio.Event(), asyncio.Event()
    await a.tell(Block(entered, release))
    await entered.wait()
    # Queue behind the blocker: a crash, then work for whoever runs after it.
    await a.tell(Count())
    await a.tell(Boom())
    pending = [asyncio.ensure_future(a.ask(Count())) for _ in range(3)]
    release.set()
    # The first instance counted once; the restarted one starts from zero and serves all three.
    assert sorted(await asyncio.gather(*pending)) == [1, 2, 3]
    assert recorder.of("start") == ["a", "a"]
    assert recorder.of("fail") == ["a"]
    snapshot = a.snapshot()
    assert snapshot.restarts == 1
    assert snapshot.last_failure is not None
    assert snapshot.last_failure.type == "RuntimeError"
    assert system.lookup("root/a") == a


async def test_ask_to_an_actor_stopped_for_good_fails_at_once(system: ActorSystem) -> None:
    recorder = Recorder()
    ref = await system.spawn(worker("solo", recorder))
    await system.shutdown()
    with pytest.raises(ActorDead):
        await ref.ask(Echo(1))
    with pytest.raises(ActorDead):
        await ref.tell(Echo(1))


async def test_pending_asks_fail_with_actor_dead_when_the_actor_stops_for_good(
    system: ActorSystem,
) -> None:
    recorder = Recorder()
    ref = await system.spawn(worker("solo", recorder))
    entered, release = asyncio.Event(), asyncio.Event()
    await ref.tell(Block(entered, release))
    await entered.wait()
    waiting = [asyncio.ensure_future(ref.ask(Echo(i))) for i in range(3)]
    await asyncio.sleep(0)  # let the asks enqueue
    stopping = asyncio.ensure_future(ref.cell.stop(final=True))
    release.set()
    await stopping
    for pending in waiting:
        with pytest.raises(ActorDead):
            await pending


async def test_ask_timeout_and_the_timed_out_message_is_never_handled(
    system: ActorSystem,
) -> None:
    recorder = Recorder()
    ref = await system.spawn(worker("solo", recorder))
    entered, release = asyncio.Event(), asyncio.Event()
    await ref.tell(Block(entered, release))
    await entered.wait()
    with pytest.raises(AskTimeout):
        await ref.ask(Count(), timeout=0.01)
    release.set()
    assert await ref.ask(Count()) == 1  # the timed-out Count was dropped, not handled


async def test_cancelled_ask_is_never_handled(system: ActorSystem) -> None:
    recorder = Recorder()
    ref = await system.spawn(worker("solo", recorder))
    entered, release = asyncio.Event(), asyncio.Event()
    await ref.tell(Block(entered, release))
    await entered.wait()
    asker = asyncio.ensure_future(ref.ask(Count()))
    await asyncio.sleep(0)
    asker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asker
    release.set()
    assert await ref.ask(Count()) == 1


async def test_full_mailbox_with_fail_policy_raises_mailbox_full(system: ActorSystem) -> None:
    recorder = Recorder()
    ref = await system.spawn(worker("solo", recorder, capacity=2))
    entered, release = asyncio.Event(), asyncio.Event()
    await ref.tell(Block(entered, release))
    await entered.wait()
    queued = [asyncio.ensure_future(ref.ask(Count())) for _ in range(2)]
    await asyncio.sleep(0)  # let both asks enqueue
    assert ref.snapshot().mailbox_depth == 2
    with pytest.raises(MailboxFull):
        await ref.tell(Count())
    with pytest.raises(MailboxFull):
        await ref.ask(Count())
    with pytest.raises(MailboxFull):
        ref.tell_nowait(Count())
    release.set()
    assert await asyncio.gather(*queued) == [1, 2]
    assert await ref.ask(Count()) == 3


async def test_full_mailbox_with_wait_policy_makes_the_sender_wait(system: ActorSystem) -> None:
    recorder = Recorder()
    spec = ChildSpec(
        "solo",
        lambda: Worker("solo", recorder),
        mailbox=MailboxConfig(capacity=1, overflow=Overflow.WAIT),
    )
    ref = await system.spawn(spec)
    entered, release = asyncio.Event(), asyncio.Event()
    await ref.tell(Block(entered, release))
    await entered.wait()
    await ref.tell(Count())  # fills the one slot
    sender = asyncio.ensure_future(ref.tell(Count()))
    asker = asyncio.ensure_future(ref.ask(Count()))
    await asyncio.sleep(0)
    assert not sender.done()
    assert not asker.done()
    with pytest.raises(MailboxFull):
        ref.tell_nowait(Count())  # never waits, whatever the policy
    release.set()
    await sender
    assert await asker == 3
    assert ref.snapshot().mailbox_depth == 0


async def test_wait_policy_ask_times_out_while_waiting_for_room(system: ActorSystem) -> None:
    recorder = Recorder()
    spec = ChildSpec(
        "solo",
        lambda: Worker("solo", recorder),
        mailbox=MailboxConfig(capacity=1, overflow=Overflow.WAIT),
    )
    ref = await system.spawn(spec)
    entered, release = asyncio.Event(), asyncio.Event()
    await ref.tell(Block(entered, release))
    await entered.wait()
    await ref.tell(Count())
    with pytest.raises(AskTimeout):
        await ref.ask(Count(), timeout=0.01)
    release.set()
    assert await ref.ask(Count()) == 2


async def test_normal_self_stop_of_a_permanent_child_restarts_it(system: ActorSystem) -> None:
    recorder = Recorder()
    await supervised(system, worker("a", recorder))
    a = system.lookup("root/a")
    await a.tell(Halt())
    assert await a.ask(Echo("again")) == "again"
    assert recorder.events == ["start:a", "stop:a", "start:a"]


async def test_child_task_crash_crashes_the_actor(system: ActorSystem) -> None:
    recorder = Recorder()
    await supervised(system, worker("a", recorder))
    a = system.lookup("root/a")

    async def probe_that_fails() -> None:
        raise ConnectionError("probe failed")

    await a.ask(SpawnTask(probe_that_fails))
    await recorder.wait_count("start:a", 2)
    assert recorder.of("fail") == ["a"]
    last_failure = a.snapshot().last_failure
    assert last_failure is not None
    assert last_failure.type == "ConnectionError"


async def test_child_tasks_are_cancelled_when_the_actor_restarts(system: ActorSystem) -> None:
    recorder = Recorder()
    await supervised(system, worker("a", recorder))
    a = system.lookup("root/a")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def probe_loop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await a.ask(SpawnTask(probe_loop))
    await started.wait()
    await a.tell(Boom())
    await asyncio.wait_for(cancelled.wait(), timeout=5)
    assert await a.ask(Echo(1)) == 1


async def test_refs_compare_by_cell_and_know_their_path(system: ActorSystem) -> None:
    recorder = Recorder()
    root = await supervised(system, worker("a", recorder))
    a = system.lookup("root/a")
    assert a.path == "root/a"
    assert a.name == "a"
    assert a == system.lookup("root/a")
    assert a != root
    assert len({a, system.lookup("root/a")}) == 1
    with pytest.raises(LookupError):
        system.lookup("root/missing")


async def test_top_level_crash_is_reported_by_the_system(system: ActorSystem) -> None:
    recorder = Recorder()
    ref = await system.spawn(worker("solo", recorder))
    await ref.tell(Boom("fatal"))
    exited = await asyncio.wait_for(system.wait_exit(), timeout=5)
    assert exited.cell is ref.cell
    assert isinstance(exited.error, RuntimeError)
    assert ref.snapshot().state is ActorState.FAILED
    with pytest.raises(ActorDead):
        await ref.ask(Echo(1))
