"""Random sequences of crashes, normal stops and passing time against a supervisor, checked
against a model of OTP semantics: who restarts, in what order, how often, and when the
supervisor gives up."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.kernel import (
    ActorDead,
    ActorSystem,
    ChildSpec,
    Restart,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    WhichChildren,
)
from tests.actors.kernel.helpers import Boom, Echo, Halt, Recorder, worker

NAMES = ["a", "b", "c", "d"]
PERIOD = 10.0


@dataclass
class Model:
    strategy: Strategy
    intensity: int
    restarts: dict[str, Restart]
    order: list[str] = field(default_factory=list)  # the supervisor's children, in order
    dead: set[str] = field(default_factory=set)  # transient children that stopped normally
    starts: dict[str, int] = field(default_factory=dict)
    restart_times: list[float] = field(default_factory=list)
    gave_up: bool = False

    def exit(self, name: str, *, crashed: bool, now: float) -> None:
        restart = self.restarts[name]
        if restart is Restart.TEMPORARY:
            self.order.remove(name)
            return
        if restart is Restart.TRANSIENT and not crashed:
            self.dead.add(name)
            return
        self.restart_times = [t for t in self.restart_times if now - t <= PERIOD] + [now]
        if len(self.restart_times) > self.intensity:
            self.gave_up = True
            return
        index = self.order.index(name)
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [name]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            group = list(self.order)
        else:
            group = self.order[index:]
        for member in group:
            if member != name and self.restarts[member] is Restart.TEMPORARY:
                self.order.remove(member)
            else:
                self.dead.discard(member)
                self.starts[member] += 1


operation = st.one_of(
    st.tuples(st.just("crash"), st.integers(0, 3)),
    st.tuples(st.just("halt"), st.integers(0, 3)),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 4.0, 11.0])),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategy=st.sampled_from(list(Strategy)),
    intensity=st.integers(0, 4),
    restarts=st.lists(st.sampled_from(list(Restart)), min_size=4, max_size=4),
    operations=st.lists(operation, max_size=12),
)
def test_supervisor_matches_the_otp_model(
    strategy: Strategy,
    intensity: int,
    restarts: list[Restart],
    operations: list[tuple[str, float]],
) -> None:
    asyncio.run(run_scenario(strategy, intensity, restarts, operations))


async def run_scenario(
    strategy: Strategy,
    intensity: int,
    restarts: list[Restart],
    operations: list[tuple[str, float]],
) -> None:
    recorder = Recorder()
    now = [0.0]
    model = Model(strategy, intensity, dict(zip(NAMES, restarts, strict=True)))
    model.order = list(NAMES)
    model.starts = dict.fromkeys(NAMES, 1)
    specs = [worker(n, recorder, restart=r) for n, r in model.restarts.items()]
    system = ActorSystem()
    sup = await system.spawn(
        ChildSpec(
            "sup",
            lambda: Supervisor(
                specs, strategy=strategy, intensity=intensity, period=PERIOD, clock=lambda: now[0]
            ),
        )
    )
    try:
        for kind, arg in operations:
            if kind == "advance":
                now[0] += arg
                continue
            live = [n for n in model.order if n not in model.dead]
            if not live:
                break
            name = live[int(arg) % len(live)]
            child = system.lookup(f"sup/{name}")
            await child.tell(Boom() if kind == "crash" else Halt())
            model.exit(name, crashed=kind == "crash", now=now[0])
            with contextlib.suppress(ActorDead):
                await child.ask(Echo(None))  # served once the child is back, if it comes back
            if model.gave_up:
                exited = await asyncio.wait_for(system.wait_exit(), timeout=5)
                assert isinstance(exited.error, SupervisorGaveUp)
                for n in model.order:
                    assert system.lookup(f"sup/{n}").cell.mailbox.closed
                break
            children = await sup.ask(WhichChildren())
            assert [n for n, _ in children] == model.order
            assert {n: recorder.of("start").count(n) for n in NAMES} == model.starts
            assert sup.snapshot().details["recent_restarts"] == len(
                [t for t in model.restart_times if now[0] - t <= PERIOD]
            )
            for n in model.order:
                expected = model.starts[n] - 1
                assert system.lookup(f"sup/{n}").snapshot().restarts == expected
    finally:
        await system.shutdown()
