"""RateLimiterActor: admits requests against their key's and their model's limits.

State lives in this process (`LocalLimits`) unless `redis_url` is set; then in Redis
(`RedisLimits`), shared by every worker and machine. When Redis does not answer, the
limiter fails open (local limits, per process) or closed (refuses), as configured; either
way it logs the outage once, counts each request it affected, and tries Redis again a
second later, so it recovers by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as redis
import structlog
from pydantic import BaseModel, ConfigDict, Field

from actors.kernel import Actor
from actors.limits import LocalLimits, Subject, Verdict
from actors.limits_redis import RedisLimits

log = structlog.get_logger("actors.limiter")

RETRY_REDIS_AFTER = 1.0  # seconds between attempts while Redis is down
UNAVAILABLE = "unavailable"


class LimiterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str | None = None
    redis_failure: Literal["open", "closed"] = Field(
        "open", description="Redis down: admit on local limits (open) or refuse (closed)"
    )
    redis_timeout: float = Field(0.25, gt=0, description="seconds a Redis call may take")
    lease_ttl: float = Field(
        3600.0, gt=0, description="seconds a concurrency slot lives if its holder dies"
    )


@dataclass(frozen=True, slots=True)
class Admit:
    """Ask: admit one request (charge `tokens` now) or say what refused it."""

    subjects: tuple[Subject, ...]
    tokens: int
    request_id: str


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    shared: bool  # admitted in Redis (settle there) rather than locally


@dataclass(frozen=True, slots=True)
class Settle:
    """Tell: the request ended; free its slot and reconcile the tokens it really used."""

    subjects: tuple[Subject, ...]
    charged: int
    used: int
    request_id: str
    shared: bool


class RateLimiterActor(Actor):
    def __init__(self, settings: LimiterSettings) -> None:
        self._settings = settings
        self._local = LocalLimits()
        self._client: redis.Redis | None = None
        self._redis: RedisLimits | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.redis_failures = 0  # requests decided without Redis because it was down
        self.refused: dict[str, int] = {}

    async def on_start(self) -> None:
        url = self._settings.redis_url
        if url is not None:
            timeout = self._settings.redis_timeout
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self._redis = RedisLimits(self._client, lease_ttl=self._settings.lease_ttl)

    async def on_stop(self) -> None:
        await self._close()

    async def on_failure(self, error: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def receive(self, message: Any) -> Any:
        match message:
            case Admit(subjects=subjects, tokens=tokens, request_id=request_id):
                admission = await self._admit(subjects, tokens, request_id)
                if not admission.verdict.allowed:
                    kind = admission.verdict.kind
                    self.refused[kind] = self.refused.get(kind, 0) + 1
                return admission
            case Settle() as settle:
                await self._settle(settle)
                return None
        return await super().receive(message)

    def _redis_usable(self, now: float) -> bool:
        return self._redis is not None and now >= self._retry_at

    async def _admit(
        self, subjects: tuple[Subject, ...], tokens: int, request_id: str
    ) -> Admission:
        now = time.monotonic()
        if self._redis_usable(now):
            assert self._redis is not None
            try:
                verdict = await self._redis.admit(subjects, tokens, request_id)
            except (redis.RedisError, OSError, TimeoutError) as exc:
                self._redis_down(now, exc)
            else:
                self._redis_up()
                return Admission(verdict, shared=True)
        if self._redis is not None:
            self.redis_failures += 1
            if self._settings.redis_failure == "closed":
                return Admission(Verdict(False, UNAVAILABLE, "", RETRY_REDIS_AFTER), False)
        return Admission(self._local.admit(subjects, tokens, now), shared=False)

    async def _settle(self, settle: Settle) -> None:
        if settle.shared and self._redis is not None:
            try:
                await self._redis.settle(
                    settle.subjects, settle.charged, settle.used, settle.request_id
                )
            except (redis.RedisError, OSError, TimeoutError) as exc:
                # The slot expires after lease_ttl; the token debt is lost. Both are logged.
                self._redis_down(time.monotonic(), exc)
            return
        self._local.settle(settle.subjects, settle.charged, settle.used, time.monotonic())

    def _redis_down(self, now: float, error: BaseException) -> None:
        self._retry_at = now + RETRY_REDIS_AFTER
        if self._down_since is None:
            self._down_since = now
            log.error(
                "rate_limiter_redis_down",
                error=repr(error),
                failing=self._settings.redis_failure,
            )

    def _redis_up(self) -> None:
        if self._down_since is not None:
            log.info(
                "rate_limiter_redis_recovered",
                down_s=round(time.monotonic() - self._down_since, 3),
                requests_affected=self.redis_failures,
            )
            self._down_since = None

    def introspect(self) -> dict[str, Any]:
        return {
            "store": "redis" if self._redis is not None else "local",
            "redis_down": self._down_since is not None,
            "redis_failures": self.redis_failures,
            "refused": dict(self.refused),
            "in_flight": self._local.in_flight(),  # local admissions only
        }
