"""Choosing the semantic cache's vector stores by measurement: lookup latency and recall of
the nearest neighbour, at 10k and 100k entries of 384 dimensions (all-MiniLM-L6-v2's).

    python -m ops.bench.vectors [--sizes 10000 100000] [--queries 200]

Candidates: the embedded ones (numpy brute force in the process; sqlite-vec's vec0 table, in
C, on a local file) and the shared one (PostgreSQL with pgvector, exact and with an HNSW
index, through asyncpg, on a private server from the `pgserver` package). Needs the
`bench-vectors` extra (`make bench-vectors`).

The vectors are clustered (1,000 topics, each a centroid with noise, normalised), and each
query is a stored vector moved a little (a paraphrase of a cached question): its true nearest
neighbour is known by an exact search, which is what recall@1 is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIMENSIONS = 384
TOPICS = 1000


@dataclass
class Measured:
    store: str
    size: int
    build_s: float
    p50_ms: float
    p99_ms: float
    recall: float


def dataset(size: int, queries: int, seed: int = 7) -> tuple[Any, Any, Any]:
    """(stored vectors, queries, each query's true nearest stored vector)."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((TOPICS, DIMENSIONS)).astype(np.float32)
    topic = rng.integers(0, TOPICS, size)
    stored = centroids[topic] + 0.6 * rng.standard_normal((size, DIMENSIONS)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    picked = rng.integers(0, size, queries)
    asked = stored[picked] + 0.02 * rng.standard_normal((queries, DIMENSIONS)).astype(np.float32)
    asked /= np.linalg.norm(asked, axis=1, keepdims=True)
    truth = np.argmax(asked @ stored.T, axis=1)
    return stored, asked, truth


def timed(search: Callable[[Any], int], asked: Any, truth: Any) -> tuple[float, float, float]:
    latencies, hits = [], 0
    for query, expected in zip(asked, truth, strict=True):
        started = time.perf_counter()
        found = search(query)
        latencies.append(time.perf_counter() - started)
        hits += int(found == int(expected))
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return statistics.median(latencies) * 1000, p99 * 1000, hits / len(truth)


def numpy_store(stored: Any, asked: Any, truth: Any) -> Measured:
    started = time.perf_counter()
    matrix = np.ascontiguousarray(stored)
    build = time.perf_counter() - started
    p50, p99, recall = timed(lambda q: int(np.argmax(matrix @ q)), asked, truth)
    return Measured("numpy, in the process", len(stored), build, p50, p99, recall)


def sqlite_vec_store(stored: Any, asked: Any, truth: Any, work: Path) -> Measured:
    # Python's own sqlite3 may be built without loadable extensions (this machine's pyenv
    # build is): pysqlite3-binary ships a SQLite that loads them.
    import pysqlite3
    import sqlite_vec

    db = pysqlite3.connect(work / f"vectors-{len(stored)}.db")
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)
    started = time.perf_counter()
    db.execute(
        f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIMENSIONS}] distance_metric=cosine)"
    )
    with db:
        db.executemany(
            "INSERT INTO v (rowid, embedding) VALUES (?, ?)",
            ((index, vector.tobytes()) for index, vector in enumerate(stored)),
        )
    build = time.perf_counter() - started
    query = "SELECT rowid FROM v WHERE embedding MATCH ? AND k = 1"

    def search(vector: Any) -> int:
        return int(db.execute(query, (vector.tobytes(),)).fetchone()[0])

    p50, p99, recall = timed(search, asked, truth)
    db.close()
    return Measured("sqlite-vec, local file", len(stored), build, p50, p99, recall)


async def pgvector_stores(stored: Any, asked: Any, truth: Any, uri: str) -> list[Measured]:
    import asyncpg

    def literal(vector: Any) -> str:
        return "[" + ",".join(f"{x:.6f}" for x in vector) + "]"

    db = await asyncpg.connect(uri)
    try:
        await db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await db.execute("DROP TABLE IF EXISTS v")
        started = time.perf_counter()
        await db.execute(f"CREATE TABLE v (id int PRIMARY KEY, embedding vector({DIMENSIONS}))")
        await db.executemany(
            "INSERT INTO v VALUES ($1, $2::vector)",
            [(i, literal(vector)) for i, vector in enumerate(stored)],
        )
        build = time.perf_counter() - started
        query = "SELECT id FROM v ORDER BY embedding <=> $1::vector LIMIT 1"
        results = []
        for name in ("pgvector, exact", "pgvector, HNSW"):
            if name.endswith("HNSW"):
                started = time.perf_counter()
                await db.execute("CREATE INDEX ON v USING hnsw (embedding vector_cosine_ops)")
                build = time.perf_counter() - started
            latencies, hits = [], 0
            for vector, expected in zip(asked, truth, strict=True):
                text = literal(vector)
                began = time.perf_counter()
                found = await db.fetchval(query, text)
                latencies.append(time.perf_counter() - began)
                hits += int(found == int(expected))
            latencies.sort()
            p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
            p50 = statistics.median(latencies) * 1000
            results.append(Measured(name, len(stored), build, p50, p99 * 1000, hits / len(truth)))
        return results
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    from pgserver.postgres_server import get_server

    measured: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("XDG_RUNTIME_DIR", tmp)  # pgserver's lock files
        server = get_server(work / "pgdata", cleanup_mode="stop")
        try:
            for size in args.sizes:
                stored, asked, truth = dataset(size, args.queries)
                measured.append(numpy_store(stored, asked, truth))
                measured.append(sqlite_vec_store(stored, asked, truth, work))
                measured.extend(
                    asyncio.run(pgvector_stores(stored, asked, truth, server.get_uri()))
                )
        finally:
            server.cleanup()
    print(f"{DIMENSIONS} dimensions, {args.queries} queries, clustered vectors")
    print("| store | entries | build s | lookup p50 ms | lookup p99 ms | recall@1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in measured:
        print(
            f"| {m.store} | {m.size:,} | {m.build_s:.1f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} "
            f"| {m.recall:.3f} |"
        )


if __name__ == "__main__":
    main()
