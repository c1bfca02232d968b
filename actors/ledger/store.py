"""The usage ledger's SQLite file, and LedgerWriterActor: the pykka ThreadingActor that owns
it (SQLite blocks; the event loop never touches it).

One row per completed request. WAL mode: readers (`citadel-gateway usage`, /admin/usage)
never block the writer, and a committed batch survives a crash of the process.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from actors.kernel import Ask
from actors.sqlite import StoreActor, connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    ts                REAL NOT NULL,
    request_id        TEXT NOT NULL,
    key_id            TEXT,
    model             TEXT NOT NULL,
    backend           TEXT,
    endpoint          TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    status            INTEGER NOT NULL,
    latency_ms        REAL NOT NULL,
    ttft_ms           REAL,
    usage_estimated   INTEGER NOT NULL DEFAULT 0,
    cached            INTEGER NOT NULL DEFAULT 0,
    saved_tokens      INTEGER NOT NULL DEFAULT 0,
    guardrails        TEXT,
    record_id         TEXT,
    instance          TEXT
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
"""
# Columns added since the first schema, for ledgers written by an earlier version.
_ADDED_COLUMNS = {
    "usage_estimated": "INTEGER NOT NULL DEFAULT 0",
    "cached": "INTEGER NOT NULL DEFAULT 0",
    "saved_tokens": "INTEGER NOT NULL DEFAULT 0",
    "guardrails": "TEXT",
    "record_id": "TEXT",
    "instance": "TEXT",
}
GROUPS = {
    "key": "key_id",
    "model": "model",
    "backend": "backend",
    "day": "date(ts, 'unixepoch')",
}
Group = Literal["key", "model", "backend", "day"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    ts: float  # unix time the request ended
    request_id: str
    key_id: str | None
    model: str  # the model that served it
    backend: str | None
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    status: int
    latency_ms: float
    ttft_ms: float | None
    usage_estimated: bool = False  # the gateway counted the tokens: the upstream reported none
    cached: bool = False  # answered from the response cache: no model spent tokens on it
    saved_tokens: int = 0  # what the cached answer cost when it was produced
    guardrails: str | None = None  # the ids of the guardrail rules that fired, comma-separated
    record_id: str | None = None  # the gateway's own id of the request: unique, never a client's
    instance: str | None = None  # the gateway process that wrote it (host:pid)


# The columns in the record's field order (a ledger from an earlier version has its added
# columns at the end, in the same order).
FIELDS = tuple(field.name for field in fields(UsageRecord))
_COLUMNS = ", ".join(FIELDS)


class LedgerStore:
    def __init__(self, path: str | Path) -> None:
        self._db = connect(path, timeout=10.0)
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(usage)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE usage ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._db.close()

    def append(self, records: list[UsageRecord]) -> int:
        """One transaction for the batch: all of it is durable, or none."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))})",
                [astuple(record) for record in records],
            )
        return len(records)

    def summary(
        self, by: tuple[Group, ...], since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        columns = [f"{GROUPS[group]} AS {group}" for group in by]
        where, args = [], []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        query = (
            f"SELECT {', '.join([*columns, ''])}COUNT(*), SUM(prompt_tokens), "
            "SUM(completion_tokens), SUM(status >= 400), AVG(latency_ms), "
            "SUM(usage_estimated), SUM(cached), SUM(saved_tokens) FROM usage"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + (f" GROUP BY {', '.join(by)} ORDER BY {', '.join(by)}" if by else "")
        )
        return [summary_row(by, tuple(row)) for row in self._db.execute(query, args)]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])

    # As a spill file (actors.ledger.pgstore): the oldest records first, then forgotten.

    def oldest(self, limit: int) -> list[tuple[int, UsageRecord]]:
        rows = self._db.execute(
            f"SELECT rowid, {_COLUMNS} FROM usage ORDER BY rowid LIMIT ?", (limit,)
        )
        return [(row[0], UsageRecord(*row[1:])) for row in rows]

    def forget(self, last_rowid: int) -> None:
        self._db.execute("DELETE FROM usage WHERE rowid <= ?", (last_rowid,))


SUMMARY_COLUMNS = (
    "requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors",
    "avg_latency_ms", "estimated_requests", "cached_requests", "saved_tokens",
)  # fmt: skip


def summary_row(by: tuple[Group, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """One summary row: the groups' values, then COUNT(*), SUM(prompt_tokens),
    SUM(completion_tokens), the errors, AVG(latency_ms), and the estimated, cached and saved
    sums, as both stores' queries select them."""
    groups = dict(zip(by, row[: len(by)], strict=True))
    requests, prompt, completion, errors, latency, estimated, cached, saved = row[len(by) :]
    return {
        **groups,
        "requests": int(requests),
        "prompt_tokens": int(prompt or 0),
        "completion_tokens": int(completion or 0),
        "total_tokens": int(prompt or 0) + int(completion or 0),
        "errors": int(errors or 0),
        "avg_latency_ms": round(float(latency or 0.0), 3),
        "estimated_requests": int(estimated or 0),
        "cached_requests": int(cached or 0),
        "saved_tokens": int(saved or 0),
    }


@dataclass(frozen=True, slots=True)
class WriteBatch(Ask[int]):
    """Ask: write these records; answers how many (once they are durable)."""

    records: list[UsageRecord]


@dataclass(frozen=True, slots=True)
class Summarize(Ask["list[dict[str, Any]]"]):
    by: tuple[Group, ...] = ("key", "model")
    since: float | None = None
    until: float | None = None


class LedgerWriterActor(StoreActor[LedgerStore]):
    def __init__(self, path: str | Path) -> None:
        super().__init__(lambda: LedgerStore(path))

    def handle(self, message: Any) -> Any:
        store = self.store
        match message:
            case WriteBatch(records=records):
                return store.append(records)
            case Summarize(by=by, since=since, until=until):
                return store.summary(by, since, until)
        return super().handle(message)
