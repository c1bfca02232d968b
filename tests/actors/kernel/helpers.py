"""Test actors and a recorder to wait on, so kernel tests wait on events, never on sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.kernel import Actor, ChildSpec, MailboxConfig, Restart
from actors.kernel.spec import Backoff

WAIT_LIMIT = 5.0  # a safety net for a broken kernel, never what a test waits for


class Recorder:
    """An append-only event log (e.g. "start:a", "stop:a", "fail:a") that tests wait on."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self._waiters: list[tuple[Callable[[list[str]], bool], asyncio.Future[None]]] = []

    def record(self, event: str) -> None:
        self.events.append(event)
        for predicate, waiter in list(self._waiters):
            if not waiter.done() and predicate(self.events):
                waiter.set_result(None)

    async def wait_for(self, predicate: Callable[[list[str]], bool]) -> None:
        if predicate(self.events):
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (predicate, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(WAIT_LIMIT):
                await waiter
        finally:
            self._waiters.remove(entry)

    async def wait_count(self, event: str, count: int) -> None:
        await self.wait_for(lambda events: events.count(event) >= count)

    def of(self, kind: str) -> list[str]:
        """The names from events of one kind, in order: of("start") -> ["a", "b"]."""
        return [e.split(":", 1)[1] for e in self.events if e.startswith(kind + ":")]

    def clear(self) -> None:
        self.events.clear()


@dataclass(frozen=True, slots=True)
class Echo:
    value: Any


@dataclass(frozen=True, slots=True)
class Boom:
    """Raise from receive."""

    reason: str = "boom"


@dataclass(frozen=True, slots=True)
class Halt:
    """Stop normally (context.stop)."""


@dataclass(frozen=True, slots=True)
class Count:
    """Increment the instance's counter and reply with it."""


@dataclass(frozen=True, slots=True)
class Block:
    """Wait until `release` is set; `entered` is set on arrival."""

    entered: asyncio.Event
    release: asyncio.Event


@dataclass(frozen=True, slots=True)
class SpawnTask:
    """Start a child task running `body`."""

    body: Callable[[], Any]
    name: str = "task"


@dataclass
class Worker(Actor):
    name: str
    recorder: Recorder
    fail_start: bool = False
    hang_on_stop: asyncio.Event | None = None
    counter: int = field(default=0, init=False)

    async def on_start(self) -> None:
        self.recorder.record(f"start:{self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    async def on_stop(self) -> None:
        self.recorder.record(f"stop:{self.name}")
        if self.hang_on_stop is not None:
            await self.hang_on_stop.wait()

    async def on_failure(self, error: BaseException) -> None:
        self.recorder.record(f"fail:{self.name}")

    async def receive(self, message: Any) -> Any:
        match message:
            case Echo(value=value):
                return value
            case Boom(reason=reason):
                raise RuntimeError(reason)
            case Halt():
                self.context.stop()
            case Count():
                self.counter += 1
                return self.counter
            case Block(entered=entered, release=release):
                entered.set()
                await release.wait()
            case SpawnTask(body=body, name=name):
                self.context.spawn_task(body(), name=name)
            case _:
                return await super().receive(message)
        return None

    def introspect(self) -> dict[str, Any]:
        return {"counter": self.counter}


def worker(
    name: str,
    recorder: Recorder,
    *,
    restart: Restart = Restart.PERMANENT,
    capacity: int = 64,
    backoff: Backoff | None = None,
    shutdown_timeout: float = 5.0,
    **kwargs: Any,
) -> ChildSpec:
    return ChildSpec(
        name=name,
        factory=lambda: Worker(name, recorder, **kwargs),
        restart=restart,
        mailbox=MailboxConfig(capacity=capacity),
        backoff=backoff,
        shutdown_timeout=shutdown_timeout,
    )
