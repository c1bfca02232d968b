"""The bounded memory backend (gateway.cache.backends): least recently used out first, by
count and by bytes; expired entries are never served."""

from __future__ import annotations

import json

import pytest

from gateway.cache.answer import CachedAnswer
from gateway.cache.backends import BoundedMemoryCache


def answer(text: str) -> CachedAnswer:
    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop"}]}  # fmt: skip
    made = CachedAnswer.from_json("chat", json.dumps(payload).encode())
    assert made is not None
    return made


async def test_the_least_recently_used_entry_goes_first() -> None:
    cache = BoundedMemoryCache(max_entries=2, max_bytes=1 << 20)
    await cache.set("a", answer("a"))
    await cache.set("b", answer("b"))
    assert await cache.get("a") is not None  # a is now the most recent
    await cache.set("c", answer("c"))
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    assert await cache.get("c") is not None
    assert len(cache) == 2
    assert cache.evicted == 1


async def test_bytes_are_bounded_and_counted() -> None:
    one = answer("x" * 400)
    cache = BoundedMemoryCache(max_entries=100, max_bytes=one.size * 2 + 10)
    for name in "abc":
        await cache.set(name, answer("x" * 400))
    assert len(cache) == 2
    assert cache.bytes == one.size * 2
    await cache.delete("b")
    await cache.delete("c")
    assert cache.bytes == 0
    await cache.set("big", answer("y" * 10_000))  # over the whole budget: not kept
    assert len(cache) == 0
    assert cache.bytes == 0


async def test_replacing_an_entry_does_not_count_it_twice() -> None:
    cache = BoundedMemoryCache(max_entries=10, max_bytes=1 << 20)
    await cache.set("a", answer("a"))
    await cache.set("a", answer("a"))
    assert len(cache) == 1
    assert cache.bytes == answer("a").size


async def test_an_expired_entry_is_not_served(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("gateway.cache.backends.time.monotonic", lambda: clock[0])
    cache = BoundedMemoryCache(max_entries=10, max_bytes=1 << 20)
    await cache.set("a", answer("a"), ttl=5.0)
    clock[0] += 4.9
    assert await cache.get("a") is not None
    clock[0] += 0.2
    assert await cache.get("a") is None
    assert len(cache) == 0
    assert cache.bytes == 0
