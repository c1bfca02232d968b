"""Where cached answers live, behind aiocache's interface (`get`, `set`, `delete`, `clear`).

- `BoundedMemoryCache`: per worker process, least recently used first out when over its
  entry count or its bytes (aiocache's SimpleMemoryCache has no bound, and a cache that
  grows until the process is killed is not one an operator can run). It keeps the answer
  objects themselves: a hit costs no parsing.
- Redis through aiocache's `RedisCache`, shared by every worker and machine using it; the
  answers are stored as versioned JSON (never pickle: whoever can write to that Redis must
  not be able to run code in the gateway) and bounded by Redis's own `maxmemory` policy.

Both take no timeout of aiocache's own (it wraps each call in `asyncio.wait_for`, a task
per call): the cache store bounds each call with `asyncio.timeout` instead.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote, urlsplit

from aiocache import RedisCache
from aiocache.base import BaseCache
from aiocache.serializers import BaseSerializer, NullSerializer

from gateway.cache.answer import CachedAnswer
from gateway.cache.settings import CacheSettings

NAMESPACE = "citadel:cache:v1"


class AnswerSerializer(BaseSerializer):  # type: ignore[misc]
    """CachedAnswer to and from its stored JSON bytes."""

    DEFAULT_ENCODING = None  # bytes, not text

    def dumps(self, value: CachedAnswer) -> bytes:
        return value.to_bytes()

    def loads(self, value: bytes | None) -> CachedAnswer | None:
        return None if value is None else CachedAnswer.from_bytes(value)


class BoundedMemoryCache(BaseCache):  # type: ignore[misc]
    """aiocache's memory backend with bounds: at most `max_entries` answers and `max_bytes`
    of them (by their stored size); expiry is checked when an entry is read."""

    NAME = "bounded-memory"

    def __init__(self, max_entries: int, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(serializer=NullSerializer(), timeout=None, **kwargs)
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def _get(self, key: str, encoding: str | None = None, _conn: Any = None) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if expires <= time.monotonic():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return answer

    async def _set(
        self,
        key: str,
        value: CachedAnswer,
        ttl: float | None = None,
        _cas_token: Any = None,
        _conn: Any = None,
    ) -> bool:
        self._remove(key)
        if value.size > self.max_bytes:
            return False
        expires = time.monotonic() + ttl if ttl else float("inf")
        self._entries[key] = (expires, value)
        self.bytes += value.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evicted += 1
        return True

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return await self._get(key) is not None

    async def _delete(self, key: str, _conn: Any = None) -> int:
        return 1 if self._remove(key) else 0

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        for key in [key for key in self._entries if not namespace or key.startswith(namespace)]:
            self._remove(key)
        return True

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.bytes -= entry[1].size
        return True

    def _build_key(self, key: str, namespace: str | None = None) -> str:
        namespace = namespace if namespace is not None else self.namespace
        return f"{namespace}:{key}" if namespace else key


def open_backend(settings: CacheSettings) -> BaseCache:
    """The backend `settings` name; connecting to Redis happens on first use."""
    if settings.backend == "memory":
        return BoundedMemoryCache(settings.max_entries, settings.max_bytes, namespace=NAMESPACE)
    assert settings.redis_url is not None  # the settings' validator
    url = urlsplit(settings.redis_url)
    database = url.path.strip("/") or "0"
    return RedisCache(
        serializer=AnswerSerializer(),
        namespace=NAMESPACE,
        timeout=None,
        endpoint=url.hostname,
        port=url.port or 6379,
        db=int(database) if database.isdigit() else 0,
        password=unquote(url.password) if url.password else None,
        ssl=url.scheme == "rediss",
        create_connection_timeout=settings.timeout,
        connection_pool_kwargs={"username": unquote(url.username)} if url.username else None,
    )
