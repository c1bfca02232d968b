"""Token budgets per key and per model, with the official SDK: admitted exactly up to the
budget (each request's estimate reserved, its usage reconciled), in one process and across
two gateways sharing the machine's Redis; a 429 saying so, with the reset time; the spend
read back from the usage ledger when Redis loses it or the gateway restarts; /admin/keys
shows the spend and what remains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import redis.asyncio as redis
from openai.types.chat import ChatCompletionMessageParam

from actors.auth.keys import KeyScopes, new_key
from actors.ledger.actor import LedgerSettings
from actors.limiter.budget import Budget
from actors.limiter.local import LimitSpec
from gateway.process.config import AuthSettings, ConfiguredKey, LimitSettings
from tests.gateway.harness import (
    ADMIN_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)
from tests.gateway.redis_harness import SHARED_REDIS

BUDGET = 400
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
TPM = 1_000_000  # never reached: its header tells what one request reserves


def budgeted_key(tokens: int = BUDGET) -> tuple[ConfiguredKey, str]:
    key_id, secret, sha = new_key()
    scopes = KeyScopes(tpm=TPM, budget=Budget(tokens=tokens, period="day"))
    return ConfiguredKey(id=key_id, secret_sha256=sha, scopes=scopes), secret


@asynccontextmanager
async def budgeted(
    *keys: ConfiguredKey,
    redis_url: str | None = None,
    ledger: Path | None = None,
    model_budget: int | None = None,
) -> AsyncIterator[Deployment]:
    auth = AuthSettings(keys=keys, admin_keys=(ADMIN_KEY,))
    usage = LedgerSettings(path=str(ledger), flush_interval=0.05) if ledger else None
    model_limits = LimitSpec(
        budget=Budget(tokens=model_budget, period="day") if model_budget else None
    )
    plan = ModelPlan("m", mock={"ttft": 0.0}, limits=model_limits)
    limits = LimitSettings(redis_url=redis_url)
    async with deployment([plan], auth=auth, usage=usage, limits=limits) as gw:
        yield gw


class Spender:
    """One client of a budgeted key: the tokens its answered requests used, and what one
    request reserves (read off x-ratelimit-remaining-tokens)."""

    def __init__(self, gw: Deployment, secret: str) -> None:
        self.client = openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=secret, max_retries=0, timeout=READ_TIMEOUT_S
        )
        self.used = 0
        self.reserve = 0
        self.refusal: openai.RateLimitError | None = None

    async def once(self) -> bool:
        """One request; False when the budget refused it."""
        try:
            raw = await self.client.chat.completions.with_raw_response.create(
                model="m",
                messages=CHAT,
                max_tokens=40,  # the model answers 16: refunded
            )
        except openai.RateLimitError as refused:
            self.refusal = refused
            return False
        reply = raw.parse()
        assert reply.usage is not None
        self.used += reply.usage.total_tokens
        self.reserve = TPM - int(raw.headers["x-ratelimit-remaining-tokens"])
        return True

    async def until_refused(self) -> None:
        for _ in range(1000):
            if not await self.once():
                return
        raise AssertionError("never refused")


async def test_a_budget_admits_exactly_up_to_its_tokens_and_says_when_it_resets() -> None:
    key, secret = budgeted_key()
    async with budgeted(key) as gw:
        spender = Spender(gw, secret)
        await spender.until_refused()
        await spender.client.close()
    # Nothing beyond the budget, and no room left for one more request's reservation.
    assert spender.used <= BUDGET < spender.used + spender.reserve
    refused = spender.refusal
    assert refused is not None
    body = refused.body
    assert isinstance(body, dict)
    assert body["code"] == "insufficient_quota"
    assert "token budget of this API key for this day (400 tokens) is spent" in body["message"]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert refused.response.headers["x-citadel-budget-reset"] == f"{tomorrow}T00:00:00Z"
    assert 0 < int(refused.response.headers["retry-after"]) <= 86400


async def test_two_gateways_sharing_redis_admit_exactly_up_to_the_budget() -> None:
    key, secret = budgeted_key(1000)
    async with AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(budgeted(key, redis_url=SHARED_REDIS)) for _ in range(2)
        ]
        spenders = [Spender(gw, secret) for gw in gateways for _ in range(4)]
        await asyncio.gather(*(spender.until_refused() for spender in spenders))
        # The burst is over (every reservation reconciled): one more from each is refused.
        assert not any([await spender.once() for spender in spenders[::4]])
        for spender in spenders:
            await spender.client.close()
    used = sum(spender.used for spender in spenders)
    reserve = max(spender.reserve for spender in spenders)
    assert used <= 1000 < used + reserve


async def test_the_spend_comes_back_from_the_ledger_after_redis_or_the_gateway_forgets_it(
    tmp_path: Path,
) -> None:
    key, secret = budgeted_key()
    ledger = tmp_path / "usage.db"
    async with budgeted(key, redis_url=SHARED_REDIS, ledger=ledger) as gw:
        spender = Spender(gw, secret)
        await spender.until_refused()
        store = redis.Redis.from_url(SHARED_REDIS)
        try:  # Redis loses the key's state (a restart: the machine's keeps nothing on disk)
            lost = [name async for name in store.scan_iter(f"citadel:rl:key:{key.id}:*")]
            assert lost
            await store.delete(*lost)
        finally:
            await store.aclose()
        assert not await spender.once()  # the spend came back from the ledger
        await spender.client.close()
    async with budgeted(key, ledger=ledger) as gw:  # a restart, with limits in the process
        again = Spender(gw, secret)
        assert not await again.once()
        async with (
            bounded_client() as http,
            http.get(f"{gw.url}/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            as response,
        ):  # fmt: skip
            listed = await response.json()
        await again.client.close()
    (shown,) = [k for k in listed["keys"] if k["id"] == key.id]
    assert shown["budget"]["spent"] == spender.used
    assert shown["budget"]["remaining"] == BUDGET - spender.used
    assert shown["budget"]["tokens"] == BUDGET
    assert shown["budget"]["resets_at"].endswith("T00:00:00Z")


async def test_a_models_budget_covers_every_key() -> None:
    first, first_secret = budgeted_key(10**6)
    second, second_secret = budgeted_key(10**6)
    async with budgeted(first, second, model_budget=300) as gw:
        a, b = Spender(gw, first_secret), Spender(gw, second_secret)
        while await a.once() and await b.once():
            pass
        refusal = a.refusal or b.refusal
        assert refusal is not None
        assert "token budget of this model" in str(refusal)
        await a.client.close()
        await b.client.close()
    assert a.used + b.used <= 300
