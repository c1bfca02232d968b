"""The gateway's schema in PostgreSQL, versioned: migrations applied in order at start and by
`citadel-gateway db migrate`, recorded in `citadel_schema`.

A gateway refuses to start against a schema newer than it knows (a newer gateway migrated
it: this one could misread it), saying so; an older schema is brought up to date. Two
gateways starting at once migrate under an advisory lock, so each migration runs once.
"""

from __future__ import annotations

from typing import Any

import asyncpg

# Each migration, in order: (version, what it does, its SQL). Never edit one that has been
# released: add the next.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "api keys, and a notification on every change to one",
        """
        CREATE TABLE api_keys (
            id            TEXT PRIMARY KEY,
            secret_sha256 TEXT NOT NULL,
            scopes        JSONB NOT NULL,
            created_at    DOUBLE PRECISION NOT NULL,
            revoked_at    DOUBLE PRECISION
        );
        CREATE FUNCTION citadel_key_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('citadel_keys', COALESCE(NEW.id, OLD.id));
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
            FOR EACH ROW EXECUTE FUNCTION citadel_key_changed();
        """,
    ),
    (
        2,
        "usage records from every gateway, one per request",
        """
        CREATE TABLE usage (
            record_id         TEXT PRIMARY KEY,
            instance          TEXT,
            ts                DOUBLE PRECISION NOT NULL,
            request_id        TEXT NOT NULL,
            key_id            TEXT,
            model             TEXT NOT NULL,
            backend           TEXT,
            endpoint          TEXT NOT NULL,
            prompt_tokens     INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            status            INTEGER NOT NULL,
            latency_ms        DOUBLE PRECISION NOT NULL,
            ttft_ms           DOUBLE PRECISION,
            usage_estimated   BOOLEAN NOT NULL DEFAULT false,
            cached            BOOLEAN NOT NULL DEFAULT false,
            saved_tokens      INTEGER NOT NULL DEFAULT 0,
            guardrails        TEXT
        );
        CREATE INDEX usage_ts ON usage (ts);
        CREATE INDEX usage_key_ts ON usage (key_id, ts);
        """,
    ),
)
VERSION = MIGRATIONS[-1][0]
KEYS_CHANNEL = "citadel_keys"
_LOCK = 0x63697461  # "cita": the advisory lock migrations hold


class SchemaTooNew(RuntimeError):
    def __init__(self, found: int) -> None:
        super().__init__(
            f"the database's schema is version {found}, newer than this gateway knows "
            f"({VERSION}): a newer citadel-gateway migrated it. Upgrade this gateway, or point "
            "it at another database."
        )
        self.found = found


async def version_of(db: Any) -> int:
    """The schema's version (0: none yet)."""
    exists = await db.fetchval("SELECT to_regclass('citadel_schema') IS NOT NULL")
    if not exists:
        return 0
    found = await db.fetchval("SELECT max(version) FROM citadel_schema")
    return int(found or 0)


async def migrate(url: str) -> list[int]:
    """Bring the schema at `url` up to this gateway's version; the versions applied. Raises
    SchemaTooNew when it is newer."""
    db = await asyncpg.connect(url, timeout=10)
    try:
        await db.execute("SELECT pg_advisory_lock($1)", _LOCK)
        try:
            return await _migrate(db)
        finally:
            await db.execute("SELECT pg_advisory_unlock($1)", _LOCK)
    finally:
        await db.close()


async def _migrate(db: Any) -> list[int]:
    found = await version_of(db)
    if found > VERSION:
        raise SchemaTooNew(found)
    await db.execute(
        "CREATE TABLE IF NOT EXISTS citadel_schema ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    applied = []
    for version, description, sql in MIGRATIONS:
        if version <= found:
            continue
        async with db.transaction():
            await db.execute(sql)
            await db.execute(
                "INSERT INTO citadel_schema (version, description) VALUES ($1, $2)",
                version,
                description,
            )
        applied.append(version)
    return applied


def is_postgres(location: str | None) -> bool:
    return location is not None and location.startswith(("postgresql://", "postgres://"))
