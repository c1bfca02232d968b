"""The exact response cache with the official SDK: repeated deterministic requests answered
without the model service, in either wire format, never across keys, under the client's
Cache-Control, coalesced, and only complete answers stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from actors.auth.keys import KeyScopes, new_key
from actors.ledger.actor import LedgerSettings
from gateway.cache.settings import CachePolicy, CacheSettings
from gateway.mock.faults import Fault, FaultMode
from gateway.process.config import AuthSettings, ConfiguredKey, LoggingSettings
from gateway.process.observability import BufferedLineLogger
from tests.gateway.harness import (
    ADMIN_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)
from tests.gateway.test_ledger import rows
from tests.gateway.test_metrics import scrape

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]
KEY_A, KEY_B = new_key(), new_key()


def keys(scopes: KeyScopes | None = None) -> AuthSettings:
    return AuthSettings(
        admin_keys=(ADMIN_KEY,),
        keys=tuple(
            ConfiguredKey(id=key_id, secret_sha256=sha, scopes=scopes or KeyScopes())
            for key_id, _, sha in (KEY_A, KEY_B)
        ),
    )


@asynccontextmanager
async def cached(
    policy: CachePolicy | None = None,
    *,
    settings: CacheSettings | None = None,
    scopes: KeyScopes | None = None,
    usage: LedgerSettings | None = None,
    logging: LoggingSettings | None = None,
    **mock: Any,
) -> AsyncIterator[Deployment]:
    plan = ModelPlan("m", cache=policy or CachePolicy(), mock={"ttft": 0.0, **mock})
    async with deployment(
        [plan], auth=keys(scopes), cache=settings, usage=usage, logging=logging
    ) as gw:
        yield gw


@asynccontextmanager
async def sdk(
    gw: Deployment, key: tuple[str, str, str] = KEY_A
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=key[1], max_retries=0, timeout=READ_TIMEOUT_S
    ) as client:
        yield client


async def ask(
    client: openai.AsyncOpenAI,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[str, str, str]:
    """(x-citadel-cache, the answer's text, its id)."""
    params = {"temperature": 0, "max_tokens": 8, **params}
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=QUESTION, stream=stream, extra_headers=headers, **params
    )
    status = raw.headers.get("x-citadel-cache", "")
    reply = raw.parse()
    if isinstance(reply, ChatCompletion):
        return status, reply.choices[0].message.content or "", reply.id
    text, ids = "", set()
    async for chunk in reply:
        ids.add(chunk.id)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert len(ids) == 1
    return status, text, ids.pop()


def upstream_requests(gw: Deployment) -> int:
    return gw.mocks["m"][0].state.stats.requests


async def stored(gw: Deployment) -> None:
    assert gw.state.cache is not None
    await gw.state.cache.flush()


async def test_a_repeated_deterministic_request_is_answered_from_the_cache() -> None:
    async with cached() as gw, sdk(gw) as client:
        first = await ask(client)
        await stored(gw)
        second = await ask(client)
        assert first[0] == "miss"
        assert second[0] == "hit"
        assert second[1] == first[1]
        assert first[1]
        assert second[2] != first[2]  # a fresh id for each answer
        assert upstream_requests(gw) == 1


@pytest.mark.parametrize(
    ("first_stream", "then_stream"),
    [(True, True), (False, True), (True, False)],
    ids=["stream-stream", "json-stream", "stream-json"],
)
async def test_an_answer_serves_either_wire_format(first_stream: bool, then_stream: bool) -> None:
    async with cached() as gw, sdk(gw) as client:
        status, text, _ = await ask(client, stream=first_stream)
        await stored(gw)
        again = await ask(client, stream=then_stream)
        assert (status, again[0]) == ("miss", "hit")
        assert again[1] == text
        assert text
        assert upstream_requests(gw) == 1


async def test_a_replayed_stream_reports_usage_only_when_asked() -> None:
    async with cached() as gw, sdk(gw) as client:
        await ask(client, stream=True)
        await stored(gw)
        for include in (False, True):
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=QUESTION, stream=True, temperature=0, max_tokens=8,
                stream_options={"include_usage": include},
            )  # fmt: skip
            assert raw.headers["x-citadel-cache"] == "hit"
            usages = [chunk.usage async for chunk in raw.parse() if chunk.usage is not None]
            assert len(usages) == (1 if include else 0)
            if include:
                assert usages[0].completion_tokens == 8
        assert upstream_requests(gw) == 1


async def test_requests_that_are_not_deterministic_are_not_cached() -> None:
    async with cached() as gw, sdk(gw) as client:
        for _ in range(2):
            status, _, _ = await ask(client, temperature=0.7)
            assert status == "bypass"
        await ask(client, temperature=0.7, seed=42)  # a seed makes it reproducible
        await stored(gw)
        assert (await ask(client, temperature=0.7, seed=42))[0] == "hit"
        assert upstream_requests(gw) == 3


async def test_a_model_may_cache_every_request() -> None:
    async with cached(CachePolicy(requests="always")) as gw, sdk(gw) as client:
        await ask(client, temperature=0.7)
        await stored(gw)
        assert (await ask(client, temperature=0.7))[0] == "hit"


async def test_a_model_without_a_cache_says_nothing_and_caches_nothing() -> None:
    async with cached(CachePolicy(enabled=False)) as gw, sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=QUESTION, temperature=0
        )
        assert "x-citadel-cache" not in raw.headers
        await ask(client)
        assert upstream_requests(gw) == 2


async def test_no_key_receives_an_answer_produced_for_another() -> None:
    async with cached() as gw, sdk(gw, KEY_A) as a, sdk(gw, KEY_B) as b:
        await ask(a)
        await stored(gw)
        assert (await ask(b))[0] == "miss"
        await stored(gw)
        assert (await ask(a))[0] == "hit"
        assert (await ask(b))[0] == "hit"
        assert upstream_requests(gw) == 2


async def test_a_shared_namespace_serves_every_key() -> None:
    async with cached(CachePolicy(namespace="shared")) as gw, sdk(gw, KEY_A) as a:
        await ask(a)
        await stored(gw)
        async with sdk(gw, KEY_B) as b:
            assert (await ask(b))[0] == "hit"
        assert upstream_requests(gw) == 1


async def test_no_cache_skips_the_lookup_and_refreshes_the_entry() -> None:
    async with cached() as gw, sdk(gw) as client:
        await ask(client)
        await stored(gw)
        status, _, _ = await ask(client, headers={"Cache-Control": "no-cache"})
        assert status == "bypass"
        assert upstream_requests(gw) == 2
        await stored(gw)
        assert (await ask(client))[0] == "hit"
        assert upstream_requests(gw) == 2


async def test_no_store_neither_reads_nor_writes() -> None:
    async with cached() as gw, sdk(gw) as client:
        assert (await ask(client, headers={"Cache-Control": "no-store"}))[0] == "bypass"
        await stored(gw)
        assert (await ask(client))[0] == "miss"  # nothing was written
        await stored(gw)
        assert (await ask(client, headers={"cache-control": "max-age=0, No-Store"}))[0] == "bypass"
        assert upstream_requests(gw) == 3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_identical_concurrent_misses_go_upstream_once(stream: bool) -> None:
    async with cached(ttft=0.2) as gw, sdk(gw) as client:
        answers = await asyncio.gather(*(ask(client, stream=stream) for _ in range(10)))
        assert upstream_requests(gw) == 1
        assert sorted(status for status, _, _ in answers) == ["hit"] * 9 + ["miss"]
        assert len({text for _, text, _ in answers}) == 1
        assert len({answer_id for _, _, answer_id in answers}) == 10


async def test_followers_go_upstream_themselves_when_the_first_request_fails() -> None:
    async with cached(ttft=0.2) as gw, sdk(gw) as client:
        gw.mocks["m"][0].state.set_fault(Fault(mode="error", status=400, count=1))
        results = await asyncio.gather(*(ask(client) for _ in range(3)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, openai.BadRequestError)]
        assert len(failed) == 1
        assert all(isinstance(r, tuple) and r[1] for r in results if r not in failed)


@pytest.mark.parametrize("fault", ["cut", "stream_error", "no_done"])
async def test_an_incomplete_stream_is_never_cached(fault: FaultMode) -> None:
    async with cached() as gw, sdk(gw) as client:
        gw.mocks["m"][0].state.set_fault(Fault(mode=fault, after_chunks=2, count=1))
        with pytest.raises(openai.APIError):
            await ask(client, stream=True)
        await stored(gw)
        status, text, _ = await ask(client, stream=True)
        assert status == "miss"
        assert text
        assert upstream_requests(gw) == 2


async def test_errors_are_never_cached() -> None:
    async with cached() as gw, sdk(gw) as client:
        gw.mocks["m"][0].state.set_fault(Fault(mode="error", status=400, count=1))
        with pytest.raises(openai.BadRequestError):
            await ask(client)
        await stored(gw)
        assert (await ask(client))[0] == "miss"


async def test_a_hit_counts_against_requests_per_minute_but_not_tokens() -> None:
    scopes = KeyScopes(rpm=3, tpm=30)  # one miss of 8 + ~10 prompt tokens fits; two would not
    async with cached(scopes=scopes) as gw, sdk(gw) as client:
        await ask(client)
        await stored(gw)
        assert (await ask(client))[0] == "hit"
        assert (await ask(client))[0] == "hit"
        with pytest.raises(openai.RateLimitError) as refused:
            await ask(client)
        assert "requests per minute" in str(refused.value)


async def test_with_charge_hits_a_hit_spends_tokens_per_minute() -> None:
    scopes = KeyScopes(tpm=45)
    settings = CacheSettings(charge_hits=True)
    async with cached(scopes=scopes, settings=settings) as gw, sdk(gw) as client:
        await ask(client)
        await stored(gw)
        assert (await ask(client))[0] == "hit"
        with pytest.raises(openai.RateLimitError) as refused:
            await ask(client)
        assert "tokens per minute" in str(refused.value)


async def test_hits_are_in_the_ledger_and_the_metrics(tmp_path: Path) -> None:
    ledger = tmp_path / "usage.db"
    usage = LedgerSettings(path=str(ledger), flush_interval=0.05)
    async with cached(usage=usage) as gw:
        async with sdk(gw) as client:
            await ask(client)
            await stored(gw)
            await ask(client, stream=True)
            await ask(client, temperature=0.5)
        metrics = await scrape(gw)
    lookups = {
        labels[1][1]: value
        for (name, labels), value in metrics.items()
        if name == "citadel_cache_lookups_total"
    }
    assert lookups == {"hit": 1.0, "miss": 1.0, "bypass": 1.0}
    saved = metrics[("citadel_cache_saved_tokens_total", (("kind", "completion"), ("model", "m")))]
    assert saved == 8.0
    assert metrics[("citadel_cache_stores_total", (("model", "m"), ("result", "stored")))] == 1.0
    records = rows(ledger)
    assert [r["cached"] for r in records] == [0, 1, 0]
    miss, hit, _ = records
    assert hit["backend"] == "cache"
    assert hit["status"] == 200
    assert (hit["prompt_tokens"], hit["completion_tokens"]) == (0, 0)
    assert hit["saved_tokens"] == miss["prompt_tokens"] + miss["completion_tokens"] > 0


async def test_an_answer_larger_than_an_entry_may_be_is_not_stored() -> None:
    settings = CacheSettings(max_entry_bytes=256)
    async with cached(settings=settings) as gw, sdk(gw) as client:
        await ask(client, max_tokens=64)
        await stored(gw)
        assert (await ask(client, max_tokens=64))[0] == "miss"


async def test_the_admin_api_shows_the_cache_and_its_policies() -> None:
    async with cached() as gw, sdk(gw) as client, bounded_client() as http:
        await ask(client)
        await stored(gw)
        url = gw.url + "/admin/cache"
        async with http.get(url, headers={"Authorization": f"Bearer {KEY_A[1]}"}) as refused:
            assert refused.status == 403
        async with http.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as response:
            view = await response.json()
        assert view["backend"] == "memory"
        assert view["available"] is True
        assert view["entries"] == 1
        assert view["bytes"] > 0
        assert view["models"]["m"]["namespace"] == "key"


async def test_the_access_log_says_hit_miss_or_bypass_and_the_tokens_saved(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    async with cached(logging=LoggingSettings(access_log=True)) as gw, sdk(gw) as client:
        await ask(client, headers={"X-Request-ID": "cache-miss"})
        await stored(gw)
        await ask(client, headers={"X-Request-ID": "cache-hit"})
        await ask(client, temperature=0.5, headers={"X-Request-ID": "cache-bypass"})
    production_logging.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line[:1] == "{"]
    access = {
        line["request_id"]: line
        for line in lines
        if line.get("event") == "request" and line["request_id"].startswith("cache-")
    }
    assert {rid: line["cache"] for rid, line in access.items()} == {
        "cache-miss": "miss", "cache-hit": "hit", "cache-bypass": "bypass"
    }  # fmt: skip
    assert access["cache-hit"]["backend"] == "cache"
    assert access["cache-hit"]["saved_tokens"] == access["cache-miss"]["prompt_tokens"] + 8
    assert access["cache-miss"]["saved_tokens"] is None
