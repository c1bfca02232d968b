"""The semantic cache's embedded vector index: per partition (tenant, model, every parameter
but the embedded text), unit vectors and the exact-cache key of the answer each stands for.

numpy in the process, chosen by measurement (docs/benchmarks.md: an exact scan of 10k
vectors in 0.4 ms, 8-20x faster than sqlite-vec). A row that expires or is evicted is zeroed
(it scores 0, below any live match) and its key forgotten, and a partition whose rows are
mostly dead is rebuilt into new arrays; a search working on a snapshot in a thread meanwhile
finds at worst a row whose key is gone, which is a miss, never another question's answer.
Large partitions are searched in a worker thread, off the event loop.

Imported only when a semantic policy makes an index (gateway.cache.semantic): numpy is
10.8 MB of every gateway process's memory, and most run no semantic cache.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.cache.vectorstore import Match

Vector = npt.NDArray[np.float32]
THREAD_ABOVE = 4096  # rows: a larger partition's scan (> ~0.2 ms) leaves the event loop


@dataclass
class _Partition:
    vectors: Vector
    keys: list[str | None] = field(default_factory=list)  # None: dead
    expires: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the question each row embeds
    rows: dict[str, int] = field(default_factory=dict)  # answer key -> its live row
    dead: int = 0

    @property
    def size(self) -> int:
        return len(self.keys)


class MemoryVectors:
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._partitions: dict[str, _Partition] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._order)

    async def nearest(self, partition: str, vector: list[float]) -> Match | None:
        """The most similar live entry of the partition (cosine similarity of unit vectors)."""
        found = self._partitions.get(partition)
        if found is None or found.size == found.dead:
            return None
        query = np.asarray(vector, dtype=np.float32)
        snapshot, keys = found.vectors[: found.size], found.keys
        expires, texts = found.expires, found.texts
        if snapshot.shape[1] != query.shape[0]:
            return None  # another embedding model's vectors
        if len(keys) > THREAD_ABOVE:
            scores = await asyncio.to_thread(np.dot, snapshot, query)
        else:
            scores = snapshot @ query
        row = int(np.argmax(scores))
        key = keys[row] if row < len(keys) else None
        if key is None:
            return None
        if expires[row] <= time.monotonic():
            self._remove(partition, key)
            return None
        return Match(key, float(scores[row]), texts[row])

    def add(self, partition: str, vector: list[float], key: str, text: str, ttl: float) -> None:
        array = np.asarray(vector, dtype=np.float32)
        found = self._partitions.get(partition)
        if found is None or found.vectors.shape[1] != array.shape[0]:
            if found is not None:
                self._drop(partition)
            found = self._partitions[partition] = _Partition(
                np.empty((16, array.shape[0]), dtype=np.float32)
            )
        if key in found.rows:
            self._remove(partition, key)
        if found.size == found.vectors.shape[0]:  # full: a new array, twice as large
            grown = np.empty((found.size * 2, array.shape[0]), dtype=np.float32)
            grown[: found.size] = found.vectors
            found.vectors = grown
        found.vectors[found.size] = array
        found.rows[key] = found.size
        found.keys.append(key)
        found.expires.append(time.monotonic() + ttl)
        found.texts.append(text)
        self._order[(partition, key)] = None
        while len(self._order) > self.max_entries:
            (old_partition, old_key), _ = self._order.popitem(last=False)
            self._remove(old_partition, old_key, ordered=False)

    def _remove(self, partition: str, key: str, *, ordered: bool = True) -> None:
        found = self._partitions.get(partition)
        if found is None or key not in found.rows:
            return
        row = found.rows.pop(key)
        if ordered:
            self._order.pop((partition, key), None)
        keys = list(found.keys)  # a new list: a search may hold the old one
        keys[row] = None
        found.vectors[row] = 0.0
        found.keys = keys
        found.dead += 1
        if found.dead == found.size:
            del self._partitions[partition]
        elif found.dead * 2 > found.size:
            self._compact(partition, found)

    def _compact(self, name: str, found: _Partition) -> None:
        live = [row for row, key in enumerate(found.keys) if key is not None]
        rebuilt = _Partition(found.vectors[live].copy())
        rebuilt.keys = [found.keys[row] for row in live]
        rebuilt.expires = [found.expires[row] for row in live]
        rebuilt.texts = [found.texts[row] for row in live]
        rebuilt.rows = {key: index for index, key in enumerate(rebuilt.keys) if key}
        self._partitions[name] = rebuilt

    def _drop(self, partition: str) -> None:
        found = self._partitions.pop(partition)
        for key in found.rows:
            self._order.pop((partition, key), None)
