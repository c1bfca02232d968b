"""The bridge to pykka, for the few actors that must block (SQLite key store, usage ledger).

Those run as pykka ThreadingActors, each on its own thread. The asyncio side reaches them in
two ways:

- `ask_bridged(ref, message)`: the fast path. The message travels with an asyncio future and
  the pykka actor settles it with `call_soon_threadsafe`; no executor thread is held.
- `await_pykka(future)`: any pykka future (a proxy call, a stop), waited on in the default
  executor so the loop never blocks. Costs a thread hop each way.

`PykkaHost` makes such an actor a supervised child like any other: it starts the pykka actor
in on_start, stops it in on_stop/on_failure, forwards every message to it, and crashes (so
its supervisor restarts both) if the pykka actor dies on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import pykka

from actors.kernel.actor import Actor
from actors.kernel.errors import ActorDead, AskTimeout, UnhandledMessage

T = TypeVar("T")


async def await_pykka(future: pykka.Future[T], *, timeout: float | None = None) -> T:
    """Await any pykka future without blocking the event loop."""
    loop = asyncio.get_running_loop()
    result: T = await loop.run_in_executor(None, partial(future.get, timeout=timeout))
    return result


@dataclass(frozen=True, slots=True)
class _Bridged:
    message: Any
    loop: asyncio.AbstractEventLoop
    reply: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class _Watch:
    loop: asyncio.AbstractEventLoop
    on_stopped: Callable[[], None]


def _settle(reply: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if reply.done():
        return  # the asker timed out or was cancelled
    if error is not None:
        reply.set_exception(error)
    else:
        reply.set_result(result)


def _call_in_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
) -> None:
    # The loop may be closed already during interpreter shutdown; nobody waits then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


class BridgedThreadingActor(pykka.ThreadingActor):
    """A pykka ThreadingActor that answers asyncio askers directly. Implement `handle`."""

    def __init__(self) -> None:
        super().__init__()
        self._watchers: list[_Watch] = []

    def handle(self, message: Any) -> Any:
        raise UnhandledMessage(f"{type(self).__name__} has no case for {type(message).__name__}")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Bridged):
            try:
                result = self.handle(message.message)
            except Exception as exc:
                _call_in_loop(message.loop, _settle, message.reply, None, exc)
            else:
                _call_in_loop(message.loop, _settle, message.reply, result, None)
            return None
        if isinstance(message, _Watch):
            self._watchers.append(message)
            return None
        return self.handle(message)

    def on_stop(self) -> None:
        for watch in self._watchers:
            _call_in_loop(watch.loop, watch.on_stopped)


async def ask_bridged(ref: pykka.ActorRef[Any], message: Any, *, timeout: float) -> Any:
    """Ask a BridgedThreadingActor from asyncio; its exception, if any, is raised here."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[Any] = loop.create_future()
    try:
        ref.tell(_Bridged(message, loop, reply))
    except pykka.ActorDeadError as exc:
        raise ActorDead(f"pykka actor {ref} is dead") from exc
    try:
        async with asyncio.timeout(timeout):
            return await reply
    except TimeoutError:
        raise AskTimeout(f"pykka actor {ref} did not reply within {timeout:g}s") from None


class PykkaHost(Actor):
    """Hosts one BridgedThreadingActor under an asyncio supervisor.

    `start` starts the pykka actor and returns its ref (e.g. `lambda: Ledger.start(path)`).
    Every message the host receives is handled by the pykka actor on its thread; the host's
    mailbox bounds what waits for it. An exception there is raised to the asker, or, for a
    tell, crashes the host, whose restart starts a fresh pykka actor.
    """

    def __init__(
        self,
        start: Callable[[], pykka.ActorRef[Any]],
        *,
        ask_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._start = start
        self._ask_timeout = ask_timeout
        self._stop_timeout = stop_timeout
        self._pykka_ref: pykka.ActorRef[Any] | None = None
        self._stopping = False

    async def on_start(self) -> None:
        ref = self._start()
        self._pykka_ref = ref
        loop = asyncio.get_running_loop()
        ref.tell(_Watch(loop, self._pykka_stopped))

    def _pykka_stopped(self) -> None:
        if not self._stopping:
            self.context.fail(ActorDead(f"hosted pykka actor {self._pykka_ref} stopped"))

    async def receive(self, message: Any) -> Any:
        assert self._pykka_ref is not None
        return await ask_bridged(self._pykka_ref, message, timeout=self._ask_timeout)

    async def on_stop(self) -> None:
        await self._stop_pykka()

    async def on_failure(self, error: BaseException) -> None:
        await self._stop_pykka()

    async def _stop_pykka(self) -> None:
        self._stopping = True
        ref = self._pykka_ref
        if ref is None or not ref.is_alive():
            return
        await await_pykka(ref.stop(block=False), timeout=self._stop_timeout)

    def introspect(self) -> dict[str, Any]:
        ref = self._pykka_ref
        return {"pykka_actor": str(ref) if ref else None, "alive": bool(ref and ref.is_alive())}
