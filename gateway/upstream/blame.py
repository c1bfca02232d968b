"""Whose fault a failure was that may be the request's own (a 500, an empty stream: SUSPECT).

The next replica that answers the same request decides: failing it the same way (or
rejecting it) blames the request, which then never counts against either replica; anything
else blames the first replica. A model with one replica has no second opinion: its suspects
count. One with more, when no second opinion comes (the retry budget or the client ran out),
forgets them: no client can eject a replica by sending what makes it fail.
"""

from __future__ import annotations

from actors.backend.actor import Judge, Outcome
from gateway.http.errors import GatewayError, InvalidRequest
from gateway.upstream.attempt import Attempt

# Outcomes that are a replica's answer to the request itself, and so an opinion on it.
_OPINIONS = frozenset({Outcome.OK, Outcome.REJECTED, Outcome.SUSPECT})


class Blame:
    """The verdicts of one request's tries; owned by its Exchange, which hears every try as
    it ends and closes this at its exit."""

    __slots__ = ("_suspect", "alone", "settled")

    def __init__(self, *, alone: bool = False) -> None:
        self.alone = alone  # the model has one replica: no second opinion can come
        self._suspect: Attempt | None = None
        self.settled = False  # a second opinion was had

    def hear(self, attempt: Attempt) -> None:
        """Learn a finished try's outcome, before it is released (it may change it)."""
        suspect = self._suspect
        if suspect is None:
            if attempt.outcome is Outcome.SUSPECT and not self.settled:
                self._suspect = attempt
            elif attempt.outcome is Outcome.SUSPECT:
                attempt.outcome = Outcome.UPSTREAM_ERROR  # no third opinion is asked
            return
        if attempt.outcome not in _OPINIONS:
            return  # the replica failed on its own account: no opinion on the request
        blamed = attempt.outcome is Outcome.REJECTED or (
            attempt.outcome is Outcome.SUSPECT and attempt.signature == suspect.signature
        )
        _judge(suspect, failed=not blamed)
        if attempt.outcome is Outcome.SUSPECT:
            attempt.outcome = Outcome.REJECTED if blamed else Outcome.UPSTREAM_ERROR
        self._suspect = None
        self.settled = True

    def client_error(self, failure: GatewayError | None) -> GatewayError:
        """What the client gets when a second replica failed its request the same way: the
        error as it was (a 500 stays a 502: which of the two is at fault is a judgement,
        and a bad deploy fails every replica alike), saying what was seen."""
        if failure is None or isinstance(failure, InvalidRequest):
            return failure or InvalidRequest("The model service rejected the request.")
        return type(failure)(
            f"{failure.message} Two replicas failed on this request the same way: the "
            "request itself may be the cause.",
            param=failure.param,
            code=failure.code,
            headers=failure.headers,
        )

    def close(self) -> None:
        """The request ended: a suspect still waiting for a second opinion counts where the
        replica was alone, and is forgotten where it was not."""
        if self._suspect is not None and self.alone:
            _judge(self._suspect, failed=True)
        self._suspect = None


def _judge(attempt: Attempt, *, failed: bool) -> None:
    attempt.lease.ref.notify(Judge(attempt.lease.lease_id, failed))
