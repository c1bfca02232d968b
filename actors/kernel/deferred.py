"""Deferred replies: a SyncActor that cannot answer an ask at once (the answer needs I/O)
returns a future, and settles it later with `settle_reply`. The asker awaits the ask, then
the future (as with RouterActor's AwaitRoom)."""

from __future__ import annotations

import asyncio
from typing import Any


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
