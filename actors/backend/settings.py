"""A replica's settings: where it is, what server it is (its kind's defaults), and the
bounds the gateway keeps with it (timeouts, pool, concurrency, probes)."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

from actors.backend.kinds import PROFILES, BackendKind, BackendProfile, RequestIdMode
from actors.backend.probe import HealthSettings


class BackendTimeouts(BaseModel):
    """Upstream timeouts, in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(5.0, gt=0, description="TCP connect to the replica")
    first_byte: float = Field(
        120.0,
        gt=0,
        description="until the response headers (non-streaming: the whole answer) or, for a "
        "stream, the first event",
    )
    idle: float = Field(60.0, gt=0, description="between two chunks of a stream")
    total: float = Field(900.0, gt=0, description="the whole request")


class BackendPool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: int = Field(1024, ge=1, description="open connections to this replica")
    keepalive: float = Field(60.0, gt=0, description="idle keep-alive connections, seconds")


class BackendSettings(BaseModel):
    """One replica of a model service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="base URL of the OpenAI-compatible server, e.g. http://h:8000")
    kind: BackendKind = Field(
        "openai-compatible",
        description="the server software: sets the defaults that differ (actors.backend.kinds)",
    )
    model: str | None = Field(
        None, description="the model name this upstream serves, if not the public id"
    )
    api_key: str | None = Field(None, description="bearer token the upstream requires, if any")
    weight: int = Field(1, ge=1, le=1000, description="share of traffic under round robin")
    max_in_flight: int | None = Field(
        None, ge=1, description="concurrent requests this replica takes (default: the kind's)"
    )
    request_id: RequestIdMode | None = Field(
        None,
        description="X-Request-ID sent upstream: uuid (the gateway's own), forward (the "
        "client's, if it sent a valid one), none (default: the kind's)",
    )
    stream_usage: bool | None = Field(
        None, description="the server reports usage in streams when asked (default: the kind's)"
    )
    supports_n: bool | None = Field(
        None, description="the server honours n > 1 (default: the kind's)"
    )
    timeouts: BackendTimeouts = BackendTimeouts()
    pool: BackendPool = BackendPool()
    health: HealthSettings = HealthSettings()

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parsed.query_string or parsed.fragment:
            raise ValueError("must not carry a query or fragment")
        if parsed.user is not None or parsed.password is not None:
            raise ValueError("must not carry credentials (use api_key)")
        if "://" in url.split("://", 1)[1] or url.split("://", 1)[1].split("/", 1)[0].endswith(":"):
            raise ValueError("must be one URL, with a port if it has a colon")  # http://ftp://x
        return url.rstrip("/")

    @cached_property
    def profile(self) -> BackendProfile:
        """The kind's defaults with this replica's own settings over them."""
        kind = PROFILES[self.kind]
        return replace(
            kind,
            health_path=self.health.path or kind.health_path,
            metrics_path=self.health.metrics_path or kind.metrics_path,
            stream_usage=kind.stream_usage if self.stream_usage is None else self.stream_usage,
            supports_n=kind.supports_n if self.supports_n is None else self.supports_n,
            max_in_flight=self.max_in_flight or kind.max_in_flight,
            request_id=self.request_id or kind.request_id,
        )
