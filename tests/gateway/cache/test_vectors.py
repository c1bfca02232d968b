"""The embedded vector index (gateway.cache.vectors): nearest by cosine similarity within a
partition, bounded, expiring, and never changing a row a search may be reading."""

from __future__ import annotations

import math

import pytest

from gateway.cache.vectors import THREAD_ABOVE, MemoryVectors


def unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


async def test_the_nearest_entry_of_the_partition_is_found() -> None:
    index = MemoryVectors()
    index.add("p", unit(1, 0, 0), "a", "question a", ttl=60)
    index.add("p", unit(0, 1, 0), "b", "question b", ttl=60)
    index.add("other", unit(1, 0.1, 0), "c", "question c", ttl=60)
    match = await index.nearest("p", unit(0.9, 0.1, 0))
    assert match is not None
    assert (match.key, match.text) == ("a", "question a")
    assert match.similarity == pytest.approx(0.9939, abs=1e-3)
    assert await index.nearest("missing", unit(1, 0, 0)) is None


async def test_entries_are_bounded_oldest_first() -> None:
    index = MemoryVectors(max_entries=2)
    index.add("p", unit(1, 0), "a", "a", ttl=60)
    index.add("p", unit(0, 1), "b", "b", ttl=60)
    index.add("q", unit(1, 1), "c", "c", ttl=60)
    assert len(index) == 2
    match = await index.nearest("p", unit(1, 0.5))  # nearer "a", were it still there
    assert match is not None
    assert match.key == "b"  # "a" went first


async def test_an_expired_entry_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("gateway.cache.vectors.time.monotonic", lambda: clock[0])
    index = MemoryVectors()
    index.add("p", unit(1, 0), "a", "a", ttl=5)
    clock[0] += 6
    assert await index.nearest("p", unit(1, 0)) is None
    assert len(index) == 0


async def test_a_search_keeps_its_snapshot_while_rows_are_removed_and_compacted() -> None:
    index = MemoryVectors(max_entries=THREAD_ABOVE * 2)
    for number in range(THREAD_ABOVE + 10):  # large: searched in a thread
        index.add("p", unit(1, number / 1000), f"k{number}", f"q{number}", ttl=60)
    searching = index.nearest("p", unit(1, 0))
    for number in range(1, THREAD_ABOVE):
        index.add("p", unit(0, 1), f"k{number}", "replaced", ttl=60)  # replace: old rows die
    match = await searching
    assert match is not None
    assert match.key == "k0"


async def test_vectors_of_another_size_are_not_compared() -> None:
    index = MemoryVectors()
    index.add("p", unit(1, 0, 0), "a", "a", ttl=60)
    assert await index.nearest("p", unit(1, 0)) is None
