"""RateLimiterActor: admits requests against their key's and their model's limits.

State lives in this process (`LocalLimits`) unless `redis_url` is set; then in Redis
(`RedisLimits`), shared by every worker and machine. When Redis does not answer, the
limiter fails open (local limits, per process) or closed (refuses), as configured; either
way it logs the outage once, counts each request it affected, and tries Redis again a
second later, so it recovers by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.kernel import Ask, SyncActor, ask_settled, settle_reply
from actors.kernel.frozen import quick_init
from actors.limiter.local import LocalLimits, Subject, Verdict
from actors.limiter.redis import RedisLimits
from actors.limiter.resp import RespClient, RespError, address_of

log = structlog.get_logger("actors.limiter.actor")

RETRY_REDIS_AFTER = 1.0  # seconds between attempts while Redis is down
UNAVAILABLE = "unavailable"


class LimiterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str | None = Field(
        None, description="redis://[user:password@]host[:port][/db], rediss:// or unix://"
    )
    redis_failure: Literal["open", "closed"] = Field(
        "open", description="Redis down: admit on local limits (open) or refuse (closed)"
    )
    redis_timeout: float = Field(0.25, gt=0, description="seconds a Redis call may take")
    lease_ttl: float = Field(
        3600.0, gt=0, description="seconds a concurrency slot lives if its holder dies"
    )

    @field_validator("redis_url")
    @classmethod
    def _speakable(cls, url: str | None) -> str | None:
        if url is not None:
            address_of(url)  # raises ValueError, shown with the field's name
        return url


@quick_init
@dataclass(frozen=True, slots=True)
class Admit(Ask["Admission"]):
    """Ask: admit one request (charge `tokens` now) or say what refused it."""

    subjects: tuple[Subject, ...]
    tokens: int
    request_id: str
    seeds: tuple[tuple[str, float], ...] = ()  # budgets' spend so far, from the ledger


@dataclass(frozen=True, slots=True)
class BudgetSpent(Ask["float"]):
    """Ask: a subject's budget spend in its current period (for /admin/keys)."""

    subject: Subject


# What a budget's period has spent so far, by the usage ledger (the tree's; 0 without one).
SpendOf = Callable[[Subject], Awaitable[float]]


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    shared: bool  # admitted in Redis (settle there) rather than locally


@dataclass(frozen=True, slots=True)
class _RemoteVerdict:
    """Self-ask: Redis decided; record that it answers, and count a refusal."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class _RedisFailed(Ask["Admission | None"]):
    """Self-ask: Redis failed; decide `admit` without it (None: a settlement failed)."""

    admit: Admit | None
    error: BaseException


@quick_init
@dataclass(frozen=True, slots=True)
class Settle:
    """Tell: the request ended; free its slot and reconcile the tokens it really used."""

    subjects: tuple[Subject, ...]
    charged: int
    used: int
    request_id: str
    shared: bool


class RateLimiterActor(SyncActor):
    """Local limits are decided synchronously in the asker's task (a SyncActor); Redis
    admissions are deferred replies, so they overlap."""

    def __init__(
        self,
        settings: LimiterSettings,
        local: LocalLimits | None = None,
        spend_of: SpendOf | None = None,
    ) -> None:
        """`local` outlives this instance (the tree holds it, as it holds each replica's
        load): a restart must not forget the requests in flight, or a key with
        max_concurrent 3 runs 6 streams after it."""
        self._settings = settings
        self._local = local if local is not None else LocalLimits()
        self._spend_of = spend_of
        self._client: RespClient | None = None
        self._redis: RedisLimits | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.redis_failures = 0  # requests decided without Redis because it was down
        self.refused: dict[str, int] = {}
        # Admitted and settled requests, and the tokens settlements said were used, since
        # this instance started: every admission is settled once, so the two counts agree
        # whenever no request is in flight.
        self.admitted = 0
        self.settled = 0
        self.tokens_used = 0
        self._settling: set[asyncio.Task[Any]] = set()  # settlements on their way to Redis

    async def on_start(self) -> None:
        url = self._settings.redis_url
        if url is not None:
            self._client = RespClient(url, timeout=self._settings.redis_timeout)
            self._redis = RedisLimits(self._client, lease_ttl=self._settings.lease_ttl)

    async def on_stop(self) -> None:
        # Settlements still on their way free their slots before the client closes (the
        # requests have ended by the time the tree stops).
        if self._settling:
            await asyncio.wait(self._settling, timeout=4 * self._settings.redis_timeout)
        await self._close()

    async def on_failure(self, error: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def handle(self, message: Any) -> Any:
        match message:
            case Admit() as admit:
                if self._redis is not None and time.monotonic() >= self._retry_at:
                    return self._admit_remotely(admit)
                return self._admit_locally(admit)
            case BudgetSpent(subject=subject):
                return self._budget_spent(subject)
            case _RemoteVerdict(verdict=verdict):
                self._redis_up()
                return self._counted(Admission(verdict, shared=True))
            case _RedisFailed(admit=admit, error=error):
                self._redis_down(time.monotonic(), error)
                return None if admit is None else self._admit_locally(admit)
            case Settle() as settle:
                self.settled += 1
                self.tokens_used += settle.used
                if settle.shared and self._redis is not None:
                    self._settle_remotely(settle)
                else:
                    self._local.settle(
                        settle.subjects, settle.charged, settle.used, time.monotonic()
                    )
                return None
        return super().handle(message)

    def _admit_locally(self, admit: Admit) -> Admission | asyncio.Future[Any]:
        """In this process: the embedded default, or Redis is down."""
        if self._redis is not None:
            self.redis_failures += 1
            if self._settings.redis_failure == "closed":
                return self._counted(
                    Admission(Verdict(False, UNAVAILABLE, "", RETRY_REDIS_AFTER), False)
                )
        seeds = dict(admit.seeds) if admit.seeds else None
        verdict = self._local.admit(admit.subjects, admit.tokens, time.monotonic(), seeds)
        if verdict.kind == "seed":
            return self._seeded_then(admit)
        return self._counted(Admission(verdict, shared=False))

    def _seeded_then(self, admit: Admit) -> asyncio.Future[Any]:
        """A budget's period this process has not seen: its spend so far read from the
        ledger (in a task), then the admission asked again with it. The ledger failing
        refuses (503): a budget is never assumed unspent."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        me = self.context.self_ref

        async def seed() -> None:
            try:
                seeds = await self._seeds(admit.subjects)
                result = await ask_settled(me, replace(admit, seeds=seeds), timeout=30)
            except Exception as exc:  # noqa: BLE001 - to the asker, never a crash
                log.error("budget_seed_failed", error=repr(exc)[:300])
                result = Admission(Verdict(False, UNAVAILABLE, "", RETRY_REDIS_AFTER), False)
            self._deliver(reply, admit, result)

        self.context.spawn_task(seed(), name="budget-seed")
        return reply

    async def _admit_seeded(self, redis_limits: RedisLimits, admit: Admit) -> Verdict:
        try:
            seeds = await self._seeds(admit.subjects)
        except Exception as exc:  # noqa: BLE001 - never assumed unspent: refused, retried
            log.error("budget_seed_failed", error=repr(exc)[:300])
            return Verdict(False, UNAVAILABLE, "", RETRY_REDIS_AFTER)
        return await redis_limits.admit(admit.subjects, admit.tokens, admit.request_id, dict(seeds))

    async def _seeds(self, subjects: tuple[Subject, ...]) -> tuple[tuple[str, float], ...]:
        """The spend so far of each budget among `subjects`, by the ledger (off the actor's
        turn: it reads nothing of the actor's state but the callable)."""
        seeds = []
        for subject in subjects:
            if subject.spec.budget is None or subject.period is None:
                continue
            spent = await self._spend_of(subject) if self._spend_of is not None else 0.0
            seeds.append((subject.name, spent))
        return tuple(seeds)

    def _budget_spent(self, subject: Subject) -> asyncio.Future[Any]:
        """Deferred: the limiter's figure (Redis's, or this process's), else the ledger's."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        redis_limits = self._redis

        async def read() -> None:
            try:
                spent = None
                if redis_limits is not None:
                    spent = await redis_limits.spent(subject)
                if spent is None:
                    spent = self._local.spent(subject)
                if spent is None:
                    spent = dict(await self._seeds((subject,))).get(subject.name, 0.0)
                settle_reply(reply, result=spent)
            except Exception as exc:  # noqa: BLE001 - to the asker
                settle_reply(reply, error=exc)

        self.context.spawn_task(read(), name="budget-spent")
        return reply

    def _counted(self, admission: Admission) -> Admission:
        if admission.verdict.allowed:
            self.admitted += 1
        else:
            kind = admission.verdict.kind
            self.refused[kind] = self.refused.get(kind, 0) + 1
        return admission

    def _deliver(self, reply: asyncio.Future[Any], admit: Admit, result: Admission | None) -> None:
        """A deferred admission to its asker; or, if the asker gave up meanwhile (its client
        left, its ask timed out), given straight back: nobody else would settle it, and its
        slot and tokens would stay taken (in Redis until lease_ttl, an hour by default)."""
        if not reply.done():
            reply.set_result(result)
        elif result is not None and result.verdict.allowed:
            given_back = Settle(admit.subjects, admit.tokens, 0, admit.request_id, result.shared)
            self.context.self_ref.notify(given_back)

    def _admit_remotely(self, admit: Admit) -> asyncio.Future[Any]:
        """A deferred reply: Redis answers in a task of its own, so admissions of different
        requests overlap (Redis makes each one atomic); what the task learns comes back to
        this actor as a message, so its state is only touched by `handle`."""
        redis_limits, me = self._redis, self.context.self_ref
        assert redis_limits is not None
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def admit_in_redis() -> None:
            try:
                try:
                    verdict = await redis_limits.admit(
                        admit.subjects, admit.tokens, admit.request_id
                    )
                    if verdict.kind == "seed":  # a period Redis does not have (yet, or now)
                        verdict = await self._admit_seeded(redis_limits, admit)
                except (RespError, OSError, TimeoutError) as exc:
                    result: Admission | None = await ask_settled(
                        me, _RedisFailed(admit, exc), timeout=30
                    )
                else:
                    result = await me.ask(_RemoteVerdict(verdict))
            except Exception as exc:  # noqa: BLE001 - to the asker, never a crash of the limiter
                settle_reply(reply, error=exc)
            else:
                self._deliver(reply, admit, result)

        self.context.spawn_task(admit_in_redis(), name="admit-in-redis")
        return reply

    def _settle_remotely(self, settle: Settle) -> None:
        redis_limits, me = self._redis, self.context.self_ref
        assert redis_limits is not None

        async def settle_in_redis() -> None:
            try:
                await redis_limits.settle(
                    settle.subjects, settle.charged, settle.used, settle.request_id
                )
            except (RespError, OSError, TimeoutError) as exc:
                # The slot expires after lease_ttl; the token debt is lost. Both are logged.
                me.notify(_RedisFailed(None, exc))

        task = self.context.spawn_task(settle_in_redis(), name="settle-in-redis")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

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
            "admitted": self.admitted,
            "settled": self.settled,
            "tokens_used": self.tokens_used,
        }
