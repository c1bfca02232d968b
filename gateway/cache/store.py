"""The response cache the edge talks to: lookups and stores with a deadline, a store that is
down bypassed rather than failed, and identical misses coalesced.

A cache is an optimisation, never a dependency: a lookup that fails or takes longer than
`cache.timeout` is a miss (counted, logged once per outage), and for `cache.retry_after`
seconds after a failure the store is not asked at all, so an outage costs requests nothing
but the cache.
Stores run in tasks of their own, off the request's path, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from aiocache.base import BaseCache
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.cache.answer import CachedAnswer
from gateway.cache.backends import BoundedMemoryCache, open_backend
from gateway.cache.metrics import CacheMetrics
from gateway.cache.semantic import SemanticIndex
from gateway.cache.settings import CacheSettings

log = structlog.get_logger("gateway.cache")

MAX_PENDING_STORES = 256
# What a cache store's failure can raise: Redis's errors, the socket's, a deadline.
STORE_ERRORS = (RedisError, OSError, TimeoutError, ValueError)


class Unavailable:
    """The lookup could not be made (the store failed, was slow, or is resting)."""

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE = Unavailable()


class ResponseCache:
    def __init__(self, settings: CacheSettings, metrics: CacheMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.backend: BaseCache = open_backend(settings)
        self._down_until = 0.0
        self._down = False
        self._flights: dict[str, asyncio.Future[CachedAnswer | None]] = {}
        self._stores: set[asyncio.Task[None]] = set()
        self.semantic = SemanticIndex(
            metrics, settings.vectors, timeout=settings.timeout * 4,
            retry_after=settings.retry_after,
        )  # fmt: skip

    async def get(self, key: str) -> CachedAnswer | Unavailable | None:
        if self._down and time.monotonic() < self._down_until:
            return UNAVAILABLE
        try:
            async with asyncio.timeout(self.settings.timeout):
                answer = await self.backend.get(key)
        except STORE_ERRORS as exc:
            self._failed("get", exc)
            return UNAVAILABLE
        self._recovered()
        return answer if isinstance(answer, CachedAnswer) else None

    def put(self, key: str, answer: CachedAnswer, ttl: float, model: str) -> None:
        """Store `answer` in the background; too large, too many stores pending, or a store
        that is down: not stored (counted)."""
        if answer.size > self.settings.max_entry_bytes:
            self.metrics.stores.labels(model, "too_large").inc()
            return
        if len(self._stores) >= MAX_PENDING_STORES or (
            self._down and time.monotonic() < self._down_until
        ):
            self.metrics.stores.labels(model, "failed").inc()
            return
        task = asyncio.ensure_future(self._store(key, answer, ttl, model))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    def later(self, work: Callable[[], None]) -> None:
        """Run `work` (assembling an answer and storing it) after the request's handler has
        returned, in the cache's own tasks, so that `flush` and `close` wait for it too. With
        too many pending already, it runs now: its followers must hear from it either way."""
        if len(self._stores) >= MAX_PENDING_STORES:
            work()
            return
        task = asyncio.ensure_future(self._run(work))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    @staticmethod
    async def _run(work: Callable[[], None]) -> None:
        work()

    async def _store(self, key: str, answer: CachedAnswer, ttl: float, model: str) -> None:
        try:
            async with asyncio.timeout(self.settings.timeout * 4):
                await self.backend.set(key, answer, ttl=float(ttl))
        except STORE_ERRORS as exc:
            self._failed("set", exc)
            self.metrics.stores.labels(model, "failed").inc()
            return
        self._recovered()
        self.metrics.stores.labels(model, "stored").inc()
        self.metrics.stored_bytes.labels(model).inc(answer.size)

    # Coalescing identical misses (within this process).

    def follow(self, key: str) -> asyncio.Future[CachedAnswer | None] | None:
        """The future answer of an identical request already upstream; or None, and the
        caller leads: it must call `landed(key, …)` however its request ends."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    def landed(self, key: str, answer: CachedAnswer | None) -> None:
        """The leader's request ended: its answer (None: no answer to share) to its
        followers."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(answer)

    # Health.

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.metrics.errors.labels(operation).inc()
        self._down_until = time.monotonic() + self.settings.retry_after
        if not self._down:
            self._down = True
            log.warning(
                "cache_unavailable",
                backend=self.settings.backend,
                operation=operation,
                error=type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("cache_available", backend=self.settings.backend)

    def describe(self) -> dict[str, object]:
        """For /admin/cache: where entries live, and how many this process holds."""
        view: dict[str, object] = {
            "backend": self.settings.backend,
            "available": not self._down,
            "in_flight": len(self._flights),
            "pending_stores": len(self._stores),
            "semantic_entries": self.semantic.entries(),
        }
        if isinstance(self.backend, BoundedMemoryCache):
            view.update(
                entries=len(self.backend),
                bytes=self.backend.bytes,
                evicted=self.backend.evicted,
                max_entries=self.backend.max_entries,
                max_bytes=self.backend.max_bytes,
            )
        return view

    async def flush(self) -> None:
        """Until the stores pending now, and those they start, have ended (each within its
        deadline)."""
        while self._stores:
            await asyncio.wait(list(self._stores))
        await self.semantic.flush()

    async def close(self) -> None:
        """Let pending stores finish (within their deadline), then close the connections."""
        if self._stores:
            await asyncio.wait(list(self._stores), timeout=self.settings.timeout * 4)
        for task in list(self._stores):
            task.cancel()
        await self.semantic.close()
        client = getattr(self.backend, "client", None)
        if isinstance(client, Redis):
            # aiocache 0.12 closes it with redis-py's deprecated close(); aclose() is current.
            await client.aclose()
        else:
            await self.backend.close()
