"""The cache's configuration: `cache:` says where entries live and how many; each model's
`cache:` (or `cache.default` for models without one) says which of its requests are cached."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SemanticPolicy(BaseModel):
    """Similar questions answered from the cache: the embedding of the system prompt and the
    last user message, compared with earlier ones of the same tenant, model and parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_model: str = Field(description="one of the gateway's models that serves embeddings")
    threshold: float = Field(
        0.95, gt=0, le=1, description="the cosine similarity a cached question must reach"
    )
    embed: Literal["system_and_question", "question"] = Field(
        "system_and_question",
        description="what is compared by meaning: the system prompt and the last user "
        "message, or the last user message only (the system prompt then matches exactly)",
    )
    max_turns: int = Field(
        1, ge=1, le=64, description="longer conversations (user messages) are not cached"
    )
    timeout: float = Field(
        0.5, gt=0, le=10, description="seconds the embedding and the search may take"
    )
    max_entries: int = Field(10_000, ge=1, description="questions indexed, per worker")


class CachePolicy(BaseModel):
    """Which requests of a model are answered from the cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    requests: Literal["deterministic", "always"] = Field(
        "deterministic",
        description="deterministic: only requests with temperature 0 or a seed; always: every "
        "request (for models whose sampling is deterministic anyway)",
    )
    ttl: float | None = Field(None, gt=0, description="seconds an answer is kept (cache.ttl)")
    namespace: Literal["key", "shared"] = Field(
        "key",
        description="key: an answer is served only to the key it was produced for; shared: "
        "to every key allowed to use the model",
    )
    semantic: SemanticPolicy | None = Field(
        None, description="also answer similar questions (chat completions)"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """`cache: true` / `cache: false` for the defaults, on or off."""
        return {"enabled": value} if isinstance(value, bool) else value


OFF = CachePolicy(enabled=False)


class VectorStoreSettings(BaseModel):
    """Where the semantic cache's questions live: in each worker (memory), or in PostgreSQL
    with pgvector, shared by every gateway on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["memory", "pgvector"] = "memory"
    postgres_url: str | None = Field(None, description="postgresql://…, for backend: pgvector")
    ef_search: int = Field(
        100, ge=1, le=1000, description="HNSW candidates per search: recall against latency"
    )

    @model_validator(mode="after")
    def _pgvector_needs_url(self) -> VectorStoreSettings:
        if self.backend == "pgvector":
            url = urlsplit(self.postgres_url or "")
            if url.scheme not in ("postgresql", "postgres"):
                raise ValueError("backend: pgvector needs a postgresql:// postgres_url")
        return self


class CacheSettings(BaseModel):
    """Where cached answers live. Memory is per worker process; Redis is shared by every worker
    and gateway machine that points at it (its own `maxmemory` policy bounds it there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = Field(None, description="redis://host:port/db, for backend: redis")
    default: CachePolicy = Field(OFF, description="the policy of models without their own")
    vectors: VectorStoreSettings = Field(
        VectorStoreSettings(), description="the semantic cache's questions"
    )
    ttl: float = Field(3600.0, gt=0, description="seconds an answer is kept")
    max_entries: int = Field(10_000, ge=1, description="answers kept in memory, per worker")
    max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="bytes of answers kept in memory, per worker"
    )
    max_entry_bytes: int = Field(
        1024 * 1024, ge=256, description="larger answers are not stored (either backend)"
    )
    timeout: float = Field(
        0.05,
        gt=0,
        le=5,
        description="seconds a lookup or a store may take; slower is a bypass, not an error",
    )
    retry_after: float = Field(
        1.0,
        ge=0,
        le=60,
        description="seconds the store is left alone after a failed or slow call (requests "
        "bypass the cache meanwhile)",
    )
    charge_hits: bool = Field(
        False, description="whether an answer from the cache counts against tokens-per-minute"
    )
    coalesce: bool = Field(
        True,
        description="identical requests arriving while the first is still upstream wait for "
        "its answer instead of each going upstream (per worker process)",
    )
    coalesce_wait: float = Field(
        60.0,
        gt=0,
        description="seconds a coalesced request waits for the first one's answer (a stream's "
        "whole answer) before going upstream itself",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ValueError("must be a redis:// or rediss:// URL with a host")
        return url

    @model_validator(mode="after")
    def _redis_needs_url(self) -> CacheSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("backend: redis needs redis_url")
        return self
