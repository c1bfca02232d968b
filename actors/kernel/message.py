"""Typed asks: a message that is asked names the type of its answer.

`Route(Ask[RouteDecision])` lets `ask_settled` (and the edge's helper built on it) return a
`RouteDecision` to the type checker instead of `Any`. It costs nothing at run time: the
base class has no fields and no slots of its own.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Answer = TypeVar("Answer", covariant=True)


class Ask(Generic[Answer]):
    """Base of a message that is asked and answered with an `Answer` (a deferred reply
    included: the actor may answer with a future that later resolves to one)."""

    __slots__ = ()
