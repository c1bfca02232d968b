"""Asking an actor from the edge: one helper and one table of timeouts for every ask a request
makes on its way.

An actor that is restarting (`ActorDead`), swamped (`MailboxFull`) or too slow to answer
(`AskTimeout`) gives the client a 503 with `Retry-After`, never a 500: the gateway is fine,
one of its actors is briefly not. Any other exception is the actor's answer (`UnknownModel`,
`QueueFull`, `AuthRefused`) and goes to the caller as it is. Deferred replies (a Redis
admission, a key-store lookup, a wait for room) are awaited the same way (`ask_settled`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from actors.kernel import ActorDead, ActorRef, Ask, AskTimeout, MailboxFull, ask_settled
from gateway.http.errors import ServiceUnavailable

Answer = TypeVar("Answer")
Service = Literal[
    "router", "replica", "rate limiter", "auth service", "ledger", "key store", "supervisor"
]

# Seconds an ask may take before the client is told to retry. Each of these actors answers
# from memory in microseconds; the deferred ones wait on Redis or a key store, whose own
# timeouts are shorter. The ledger's summaries and the key store read a database, and a
# supervisor restarting a child waits for it to stop and start: they may take a while.
ASK_TIMEOUTS: dict[Service, float] = {
    "router": 2.0,
    "replica": 2.0,
    "rate limiter": 2.0,
    "auth service": 2.0,
    "ledger": 30.0,
    "key store": 10.0,
    "supervisor": 30.0,
}


async def ask(
    ref: ActorRef,
    message: Ask[Answer],
    service: Service,
    *,
    timeout: float | None = None,
    abandoned: Callable[[Answer], None] | None = None,
) -> Answer:
    """`ref`'s answer to `message` (within `timeout`, by default the service's), or a 503
    saying which service is restarting. `abandoned`: as in ask_settled."""
    try:
        limit = ASK_TIMEOUTS[service] if timeout is None else timeout
        return await ask_settled(ref, message, timeout=limit, abandoned=abandoned)
    except (ActorDead, AskTimeout, MailboxFull):
        raise ServiceUnavailable(
            f"The gateway's {service} is restarting or busy. Retry shortly.",
            headers={"Retry-After": "1"},
        ) from None
