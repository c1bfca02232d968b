"""A stream's events, kept while they are relayed so that a complete answer can be cached.

Bounded by the largest entry the cache stores: past it, the events are no longer kept and
the answer is not cached (an answer too large to store needs no copy)."""

from __future__ import annotations

from gateway.cache.answer import CachedAnswer, Kind


class StreamCapture:
    __slots__ = ("_chunks", "_kind", "_limit", "_size")

    def __init__(self, kind: Kind, limit: int) -> None:
        self._kind, self._limit = kind, limit
        self._chunks: list[bytes] = []
        self._size = 0

    def keep(self, events: bytes) -> None:
        if self._size <= self._limit:
            self._chunks.append(events)
            self._size += len(events)

    def answer(self) -> CachedAnswer | None:
        """The stream's answer, if it was kept whole and is complete."""
        if self._size > self._limit:
            return None
        return CachedAnswer.from_stream(self._kind, b"".join(self._chunks))
