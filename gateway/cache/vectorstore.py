"""What the semantic cache needs of a vector store, with no store behind it: the embedded
index (gateway.cache.vectors, numpy) and PostgreSQL's (gateway.cache.pgvectors) both are one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class VectorStore(Protocol):
    """What the semantic cache needs of a vector store: this module's, per process, or
    PostgreSQL's (gateway.cache.pgvectors), shared."""

    async def nearest(self, partition: str, vector: list[float]) -> Match | None: ...

    def add(self, partition: str, vector: list[float], key: str, text: str, ttl: float) -> None:
        """Index `vector` (a question's, `text`) for the answer stored under `key`."""


@dataclass(frozen=True, slots=True)
class Match:
    key: str  # the exact cache's key of the answer
    similarity: float
    text: str  # the cached question
