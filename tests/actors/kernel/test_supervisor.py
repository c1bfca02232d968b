"""OTP semantics of Supervisor: strategies, restart types, intensity, backoff, shutdown."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from actors.kernel import (
    ActorDead,
    ActorRef,
    ActorStartError,
    ActorState,
    ActorSystem,
    Backoff,
    ChildSpec,
    Restart,
    RestartChild,
    StartChild,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    TerminateChild,
    WhichChildren,
)
from tests.actors.kernel.helpers import Boom, Count, Echo, Halt, Recorder, worker


async def start_tree(
    system: ActorSystem,
    specs: Sequence[ChildSpec],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 100,
    period: float = 60.0,
) -> ActorRef:
    return await system.spawn(
        ChildSpec(
            "sup",
            lambda: Supervisor(specs, strategy=strategy, intensity=intensity, period=period),
        )
    )


async def crash_and_settle(system: ActorSystem, sup: ActorRef, child: str) -> None:
    """Crash `child` with a tell, then wait until the supervisor has handled the exit: the
    ask to the restarted child is served by its new instance, and the supervisor answers only
    after the restart round that started it is complete."""
    ref = system.lookup(f"sup/{child}")
    await ref.tell(Boom())
    await ref.ask(Echo(None))
    await sup.ask(WhichChildren())


async def test_children_start_in_order_and_stop_in_reverse(system: ActorSystem) -> None:
    recorder = Recorder()
    await start_tree(system, [worker(n, recorder) for n in "abc"])
    assert recorder.of("start") == ["a", "b", "c"]
    await system.shutdown()
    assert recorder.of("stop") == ["c", "b", "a"]


async def test_one_for_one_restarts_only_the_crashed_child(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(system, [worker(n, recorder) for n in "abc"])
    recorder.clear()
    await crash_and_settle(system, sup, "b")
    assert recorder.events == ["fail:b", "start:b"]


async def test_one_for_all_restarts_every_child_in_order(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(
        system, [worker(n, recorder) for n in "abcd"], strategy=Strategy.ONE_FOR_ALL
    )
    recorder.clear()
    await crash_and_settle(system, sup, "b")
    assert recorder.events == [
        "fail:b",
        "stop:d",
        "stop:c",
        "stop:a",
        "start:a",
        "start:b",
        "start:c",
        "start:d",
    ]
    restarts = {name: system.lookup(f"sup/{name}").snapshot().restarts for name in "abcd"}
    assert restarts == {"a": 1, "b": 1, "c": 1, "d": 1}


async def test_rest_for_one_restarts_the_child_and_those_after_it(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(
        system, [worker(n, recorder) for n in "abcd"], strategy=Strategy.REST_FOR_ONE
    )
    recorder.clear()
    await crash_and_settle(system, sup, "b")
    assert recorder.events == ["fail:b", "stop:d", "stop:c", "start:b", "start:c", "start:d"]


async def test_siblings_restarted_by_one_for_all_keep_their_mailboxes(
    system: ActorSystem,
) -> None:
    recorder = Recorder()
    sup = await start_tree(
        system, [worker(n, recorder) for n in "ab"], strategy=Strategy.ONE_FOR_ALL
    )
    a, b = system.lookup("sup/a"), system.lookup("sup/b")
    await a.tell(Boom())
    answers = await asyncio.gather(*(b.ask(Echo(i)) for i in range(5)))
    assert answers == [0, 1, 2, 3, 4]
    await sup.ask(WhichChildren())


async def test_transient_child_not_restarted_after_a_normal_stop(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(system, [worker("t", recorder, restart=Restart.TRANSIENT)])
    t = system.lookup("sup/t")
    await t.tell(Halt())
    await recorder.wait_count("stop:t", 1)
    children = await sup.ask(WhichChildren())
    assert children == (("t", ActorState.STOPPED),)
    assert recorder.of("start") == ["t"]
    with pytest.raises(ActorDead):
        await t.ask(Echo(1))


async def test_transient_child_restarted_after_a_crash(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(system, [worker("t", recorder, restart=Restart.TRANSIENT)])
    await crash_and_settle(system, sup, "t")
    assert recorder.of("start") == ["t", "t"]


async def test_temporary_child_is_never_restarted_and_is_removed(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(
        system, [worker("tmp", recorder, restart=Restart.TEMPORARY), worker("p", recorder)]
    )
    tmp = system.lookup("sup/tmp")
    await tmp.tell(Boom())
    await recorder.wait_count("fail:tmp", 1)
    children = await sup.ask(WhichChildren())
    assert children == (("p", ActorState.RUNNING),)
    assert recorder.of("start") == ["tmp", "p"]
    with pytest.raises(ActorDead):
        await tmp.ask(Echo(1))


async def test_intensity_exceeded_escalates_to_the_parent(system: ActorSystem) -> None:
    recorder = Recorder()
    inner = ChildSpec(
        "inner",
        lambda: Supervisor([worker("w", recorder)], intensity=2, period=3600),
    )
    outer = await system.spawn(ChildSpec("outer", lambda: Supervisor([inner], intensity=5)))
    w = system.lookup("outer/inner/w")
    for _ in range(2):
        await w.tell(Boom())
        await w.ask(Echo(None))  # served by the restarted instance
    recorder.clear()
    await w.tell(Boom())  # the third restart in the period: inner gives up
    # Outer restarts inner, which starts w afresh; the ref still works.
    assert await w.ask(Echo("back")) == "back"
    await outer.ask(WhichChildren())
    assert recorder.events == ["fail:w", "start:w"]
    inner_snapshot = system.lookup("outer/inner").snapshot()
    assert inner_snapshot.restarts == 1
    assert inner_snapshot.last_failure is not None
    assert inner_snapshot.last_failure.type == "SupervisorGaveUp"


async def test_root_supervisor_giving_up_is_reported_by_the_system(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(system, [worker("a", recorder), worker("b", recorder)], intensity=0)
    await system.lookup("sup/a").tell(Boom())
    exited = await asyncio.wait_for(system.wait_exit(), timeout=5)
    assert isinstance(exited.error, SupervisorGaveUp)
    assert recorder.of("stop") == ["b"]  # a had crashed; b was stopped by the supervisor
    assert system.lookup("sup/b").snapshot().state is ActorState.STOPPED
    assert sup.snapshot().state is ActorState.FAILED
    with pytest.raises(ActorDead):
        await system.lookup("sup/b").ask(Echo(1))


async def test_restarts_outside_the_period_do_not_count(system: ActorSystem) -> None:
    recorder = Recorder()
    now = [0.0]
    sup = await system.spawn(
        ChildSpec(
            "sup",
            lambda: Supervisor(
                [worker("a", recorder)], intensity=1, period=10, clock=lambda: now[0]
            ),
        )
    )
    for step in range(5):
        now[0] = step * 11.0  # each crash falls outside the previous one's window
        await crash_and_settle(system, sup, "a")
    assert recorder.of("start").count("a") == 6
    assert sup.snapshot().state is ActorState.RUNNING


async def test_backoff_delays_grow_to_the_cap_and_are_jittered() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.25)
    assert [backoff.ceiling(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    rng = random.Random(7)
    for attempt in range(6):
        delays = {backoff.delay(attempt, rng) for _ in range(50)}
        ceiling = backoff.ceiling(attempt)
        assert all(0.75 * ceiling <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered: not all equal


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=2, maximum=1)


async def test_supervisor_waits_the_backoff_and_the_mailbox_keeps_filling(
    system: ActorSystem,
) -> None:
    recorder = Recorder()
    backoff = Backoff(initial=0.05, maximum=0.05, jitter=0.0)
    sup = await start_tree(system, [worker("a", recorder, backoff=backoff)])
    a = system.lookup("sup/a")
    await a.tell(Boom())
    await recorder.wait_count("fail:a", 1)
    await sup.ask(WhichChildren())  # the exit is handled: the restart is scheduled
    assert a.snapshot().state is ActorState.RESTARTING
    answers = [asyncio.ensure_future(a.ask(Count())) for _ in range(3)]
    await asyncio.sleep(0)
    assert a.snapshot().mailbox_depth == 3
    assert sorted(await asyncio.gather(*answers)) == [1, 2, 3]
    assert recorder.of("start") == ["a", "a"]


async def test_failed_restart_counts_and_is_retried(system: ActorSystem) -> None:
    recorder = Recorder()
    attempts = iter([False, True, True, False])  # start ok; 2 restarts fail; then ok

    def factory() -> object:
        from tests.actors.kernel.helpers import Worker

        return Worker("a", recorder, fail_start=next(attempts))

    spec = ChildSpec("a", factory)  # type: ignore[arg-type]
    sup = await start_tree(system, [spec], intensity=5)
    await crash_and_settle(system, sup, "a")
    assert recorder.of("start") == ["a", "a", "a", "a"]
    assert system.lookup("sup/a").snapshot().restarts == 3
    assert sup.snapshot().details["recent_restarts"] == 3


async def test_a_child_that_cannot_start_fails_the_supervisor_start(system: ActorSystem) -> None:
    recorder = Recorder()
    specs = [worker("a", recorder), worker("b", recorder, fail_start=True), worker("c", recorder)]
    with pytest.raises(ActorStartError):
        await start_tree(system, specs)
    assert recorder.events == ["start:a", "start:b", "stop:a"]


async def test_shutdown_timeout_kills_a_child_that_hangs_in_on_stop(system: ActorSystem) -> None:
    recorder = Recorder()
    never = asyncio.Event()
    await start_tree(
        system,
        [
            worker("a", recorder),
            worker("hang", recorder, hang_on_stop=never, shutdown_timeout=0.05),
        ],
    )
    await system.shutdown()
    assert recorder.of("stop") == ["hang", "a"]
    assert system.lookup("sup/hang").snapshot().state is ActorState.STOPPED


async def test_dynamic_children_are_added_and_removed_at_run_time(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(system, [worker("a", recorder)])
    b = await sup.ask(StartChild(worker("b", recorder)))
    assert await b.ask(Echo("b")) == "b"
    assert b == system.lookup("sup/b")
    with pytest.raises(ValueError, match="already has a child"):
        await sup.ask(StartChild(worker("b", recorder)))
    await crash_and_settle(system, sup, "b")
    assert recorder.of("start") == ["a", "b", "b"]
    await sup.ask(TerminateChild("b"))
    assert await sup.ask(WhichChildren()) == (("a", ActorState.RUNNING),)
    with pytest.raises(ActorDead):
        await b.ask(Echo(1))
    with pytest.raises(LookupError):
        await sup.ask(TerminateChild("b"))


async def test_dynamic_child_that_fails_to_start_is_not_kept(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(system, [])
    with pytest.raises(ActorStartError):
        await sup.ask(StartChild(worker("bad", recorder, fail_start=True)))
    assert await sup.ask(WhichChildren()) == ()


async def test_operator_restart_restarts_one_child(system: ActorSystem) -> None:
    recorder = Recorder()
    sup = await start_tree(system, [worker("a", recorder), worker("b", recorder)])
    recorder.clear()
    await sup.ask(RestartChild("a"))
    assert recorder.events == ["stop:a", "start:a"]
    assert system.lookup("sup/a").snapshot().restarts == 1
    assert sup.snapshot().details["recent_restarts"] == 0


async def test_restarted_supervisor_keeps_dynamic_children_and_their_refs(
    system: ActorSystem,
) -> None:
    recorder = Recorder()
    inner = ChildSpec("inner", lambda: Supervisor([], intensity=0))
    outer = await system.spawn(ChildSpec("outer", lambda: Supervisor([inner], intensity=5)))
    inner_ref = system.lookup("outer/inner")
    dyn = await inner_ref.ask(StartChild(worker("dyn", recorder)))
    await dyn.tell(Boom())  # intensity 0: inner gives up at once, outer restarts it
    assert await dyn.ask(Echo("still here")) == "still here"
    await outer.ask(WhichChildren())
    assert recorder.of("start") == ["dyn", "dyn"]
