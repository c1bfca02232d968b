"""The bridge to pykka ThreadingActors, and supervising one like any other child."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from actors.kernel import (
    ActorDead,
    ActorSystem,
    AskTimeout,
    BridgedThreadingActor,
    ChildSpec,
    PykkaHost,
    Supervisor,
    ask_bridged,
    await_pykka,
)
from tests.actors.kernel.helpers import Recorder


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: int


@dataclass(frozen=True, slots=True)
class Get:
    key: str


@dataclass(frozen=True, slots=True)
class Fail:
    pass


@dataclass(frozen=True, slots=True)
class StopYourself:
    pass


@dataclass(frozen=True, slots=True)
class WaitFor:
    event: threading.Event


class Store(BridgedThreadingActor):
    """Blocking work on its own thread, like the SQLite stores."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, int] = {}
        self.thread: str | None = None

    def handle(self, message: Any) -> Any:
        self.thread = threading.current_thread().name
        match message:
            case Put(key=key, value=value):
                self.data[key] = value
                return None
            case Get(key=key):
                return (self.data[key], self.thread)
            case Fail():
                raise ValueError("store failure")
            case StopYourself():
                self.stop()
                return None
            case WaitFor(event=event):
                event.wait()
                return None
        return super().handle(message)


async def test_ask_bridged_runs_on_the_actor_thread_and_returns_errors() -> None:
    ref = Store.start()
    try:
        await ask_bridged(ref, Put("k", 7), timeout=5)
        value, thread = await ask_bridged(ref, Get("k"), timeout=5)
        assert value == 7
        assert thread != threading.current_thread().name
        with pytest.raises(ValueError, match="store failure"):
            await ask_bridged(ref, Fail(), timeout=5)
        assert (await ask_bridged(ref, Get("k"), timeout=5))[0] == 7  # survived
    finally:
        ref.stop()


async def test_ask_bridged_times_out_without_blocking_the_loop() -> None:
    ref = Store.start()
    gate = threading.Event()
    try:
        with pytest.raises(AskTimeout):
            await ask_bridged(ref, WaitFor(gate), timeout=0.02)
    finally:
        gate.set()
        ref.stop()


async def test_ask_bridged_to_a_dead_pykka_actor_raises_actor_dead() -> None:
    ref = Store.start()
    ref.stop()
    with pytest.raises(ActorDead):
        await ask_bridged(ref, Get("k"), timeout=5)


async def test_await_pykka_awaits_any_pykka_future() -> None:
    ref = Store.start()
    try:
        ref.tell(Put("a", 1))
        proxy = ref.proxy()
        assert await await_pykka(proxy.data) == {"a": 1}
    finally:
        await await_pykka(ref.stop(block=False))


def host_spec(recorder: Recorder) -> ChildSpec:
    def start() -> pykka.ActorRef[Any]:
        recorder.record("pykka_start")
        return Store.start()

    return ChildSpec("store", lambda: PykkaHost(start, ask_timeout=5))


async def test_hosted_pykka_actor_answers_asks_and_ask_errors_do_not_restart_it(
    system: ActorSystem,
) -> None:
    recorder = Recorder()
    await system.spawn(ChildSpec("root", lambda: Supervisor([host_spec(recorder)])))
    store = system.lookup("root/store")
    await store.ask(Put("k", 1))
    with pytest.raises(ValueError, match="store failure"):
        await store.ask(Fail())
    assert (await store.ask(Get("k")))[0] == 1
    assert recorder.events == ["pykka_start"]
    assert store.snapshot().details["alive"] is True


async def test_tell_failure_in_hosted_pykka_actor_restarts_it(system: ActorSystem) -> None:
    recorder = Recorder()
    await system.spawn(ChildSpec("root", lambda: Supervisor([host_spec(recorder)])))
    store = system.lookup("root/store")
    await store.ask(Put("k", 1))
    await store.tell(Fail())
    await store.ask(Put("k", 2))  # served by the fresh pykka actor after the restart
    assert recorder.events == ["pykka_start", "pykka_start"]
    assert store.snapshot().restarts == 1
    assert (await store.ask(Get("k")))[0] == 2


async def test_pykka_actor_that_stops_by_itself_is_restarted(system: ActorSystem) -> None:
    recorder = Recorder()
    await system.spawn(ChildSpec("root", lambda: Supervisor([host_spec(recorder)])))
    store = system.lookup("root/store")
    await store.ask(StopYourself())
    await recorder.wait_count("pykka_start", 2)
    await store.ask(Put("k", 3))
    assert (await store.ask(Get("k")))[0] == 3
    last_failure = store.snapshot().last_failure
    assert last_failure is not None
    assert last_failure.type == "ActorDead"


async def test_stopping_the_tree_stops_the_pykka_thread(system: ActorSystem) -> None:
    recorder = Recorder()
    await system.spawn(ChildSpec("root", lambda: Supervisor([host_spec(recorder)])))
    await system.lookup("root/store").ask(Put("k", 1))
    assert len(pykka.ActorRegistry.get_all()) == 1
    await system.shutdown()
    assert pykka.ActorRegistry.get_all() == []
