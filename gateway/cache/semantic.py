"""The semantic cache: similar questions answered with a cached answer.

A cacheable chat request's question (system prompt and last user message) is embedded by the
model's `semantic.embedding_model` and compared with the questions already answered in its
partition: the same tenant, served model and embedding model, and exactly the same everything
else (parameters, tools, earlier turns). A match needs the similarity threshold and the
near-miss guard (gateway.cache.question); its answer is the exact cache's entry it points to,
so an answer is stored once and an expired one is a miss. Any failure, or a call past
`semantic.timeout`, is a miss: the request goes upstream as if uncached.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from actors.kernel import ActorRef
from gateway.cache.embedder import embed
from gateway.cache.metrics import CacheMetrics
from gateway.cache.pgvectors import PgVectors, Unreachable
from gateway.cache.question import same_question
from gateway.cache.settings import SemanticPolicy, VectorStoreSettings
from gateway.cache.vectorstore import Match, VectorStore

if TYPE_CHECKING:
    from gateway.cache.vectors import MemoryVectors

log = structlog.get_logger("gateway.cache.semantic")


@dataclass(frozen=True, slots=True)
class SemanticPlan:
    partition: str
    text: str  # what is embedded
    policy: SemanticPolicy


@dataclass(frozen=True, slots=True)
class Found:
    vector: list[float] | None  # the question's embedding, to index its answer under
    match: Match | None  # a cached question it may share an answer with


class SemanticIndex:
    """The questions answered so far, one vector index per served model (in this process)."""

    def __init__(
        self, metrics: CacheMetrics, settings: VectorStoreSettings, *, timeout: float,
        retry_after: float,
    ) -> None:  # fmt: skip
        self._metrics = metrics
        self._indexes: dict[str, MemoryVectors] = {}
        self._failing: set[str] = set()  # embedding models whose last call failed
        self.shared: PgVectors | None = None
        if settings.backend == "pgvector":
            assert settings.postgres_url is not None  # the settings' validator
            self.shared = PgVectors(
                settings.postgres_url, timeout=timeout, retry_after=retry_after,
                ef_search=settings.ef_search,
            )  # fmt: skip

    async def find(self, router: ActorRef, model: str, plan: SemanticPlan) -> Found:
        policy = plan.policy
        lookups = self._metrics.semantic
        vector = None
        try:
            async with asyncio.timeout(policy.timeout):
                vector = await embed(router, policy.embedding_model, plan.text, policy.timeout)
                if vector is None:
                    raise TimeoutError("no embedding")  # failed: the same as too slow
                self._embedding_works(policy.embedding_model)
                store = self._store(model, policy, create=False)
                partition = f"{model}:{plan.partition}"
                match = await store.nearest(partition, vector) if store is not None else None
        except TimeoutError:
            lookups.labels(model, "unavailable").inc()
            if vector is None:
                self._embedding_failed(policy.embedding_model)
            return Found(None, None)
        except Unreachable:  # logged by the store, once per outage
            lookups.labels(model, "unavailable").inc()
            return Found(None, None)
        if match is None or match.similarity < policy.threshold:
            lookups.labels(model, "miss").inc()
            return Found(vector, None)
        if not same_question(plan.text, match.text):
            lookups.labels(model, "guarded").inc()
            return Found(vector, None)
        return Found(vector, match)

    def _store(self, model: str, policy: SemanticPolicy, *, create: bool) -> VectorStore | None:
        """The shared store, or this process's index of the model's questions."""
        if self.shared is not None:
            return self.shared
        index = self._indexes.get(model)
        if index is None and create:
            # numpy's, imported with the first index (most gateways never make one).
            from gateway.cache.vectors import MemoryVectors

            index = self._indexes[model] = MemoryVectors(policy.max_entries)
        if index is not None:
            index.max_entries = policy.max_entries  # a reload may have changed it
        return index

    def _embedding_failed(self, embedding_model: str) -> None:
        """Logged once per outage of the embedding model, not once per request."""
        if embedding_model not in self._failing:
            self._failing.add(embedding_model)
            log.warning("semantic_embedding_unavailable", embedding_model=embedding_model)

    def _embedding_works(self, embedding_model: str) -> None:
        if embedding_model in self._failing:
            self._failing.discard(embedding_model)
            log.info("semantic_embedding_available", embedding_model=embedding_model)

    def remember(
        self, model: str, plan: SemanticPlan, vector: list[float], key: str, ttl: float
    ) -> None:
        store = self._store(model, plan.policy, create=True)
        assert store is not None  # created
        store.add(f"{model}:{plan.partition}", vector, key, plan.text, ttl)

    async def flush(self) -> None:
        if self.shared is not None:
            await self.shared.flush()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    def entries(self) -> dict[str, int]:
        return {model: len(index) for model, index in self._indexes.items()}
