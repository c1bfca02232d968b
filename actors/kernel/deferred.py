"""Deferred replies: a SyncActor that cannot answer an ask at once (the answer needs I/O)
returns a future, and settles it later with `settle_reply`. The asker awaits the ask, then
the future (as with RouterActor's AwaitRoom)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from actors.kernel.errors import AskTimeout
from actors.kernel.message import Ask

if TYPE_CHECKING:
    from actors.kernel.ref import ActorRef

Answer = TypeVar("Answer")


def settle_reply(
    reply: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    """Resolve `reply` with `result` or `error`, unless the asker has given up on it."""
    if reply.done():
        return
    if error is not None:
        reply.set_exception(error)
    else:
        reply.set_result(result)


async def ask_settled(
    ref: ActorRef,
    message: Ask[Answer],
    *,
    timeout: float,
    abandoned: Callable[[Answer], None] | None = None,
) -> Answer:
    """Ask, and if the actor deferred its reply (answered with a future), await that too; the
    whole within `timeout` (AskTimeout after it). The one way to consume a deferred reply.

    `abandoned` gets a reply that was settled but never reached the asker: the asker was
    cancelled (or timed out) after the actor settled it and before the asker resumed. An
    answer that holds something (an admission: a slot, tokens) is given back there; one the
    asker gave up on before it was settled the actor sees itself (the future is cancelled)."""
    answer: Any = await ref.ask(message, timeout=timeout)
    if not isinstance(answer, asyncio.Future):
        return answer  # type: ignore[no-any-return]
    try:
        async with asyncio.timeout(timeout):
            return await answer  # type: ignore[no-any-return]
    except TimeoutError:
        _hand_over(answer, abandoned)
        raise AskTimeout(f"{ref} did not settle its reply within {timeout:g}s") from None
    except asyncio.CancelledError:
        _hand_over(answer, abandoned)
        raise


def _hand_over(answer: asyncio.Future[Any], abandoned: Callable[[Any], None] | None) -> None:
    settled = answer.done() and not answer.cancelled() and answer.exception() is None
    if abandoned is not None and settled:
        abandoned(answer.result())
