"""Rate limits in one gateway (state in the process): headers, 429s, token reconciliation
(streams included), concurrency slots on every exit path, model limits, and the SDK's
retry honouring Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from actors.auth.keys import hash_secret
from actors.tree import LIMITER
from gateway.http.state import STATE, GatewayState
from gateway.mock.faults import Fault
from gateway.process.config import load_config
from gateway.process.server import RunningServer, start_gateway
from tests.gateway.harness import (
    ADMIN_KEY,
    READ_TIMEOUT_S,
    Mock,
    bounded_client,
    mock_service,
    until,
)

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
SECRET = "s" * 43


def key_for(key_id: str) -> tuple[str, dict[str, Any]]:
    """A configured key (id, hash) and the full key a client sends."""
    return f"sk-citadel-{key_id}-{SECRET}", {"id": key_id, "secret_sha256": hash_secret(SECRET)}


@asynccontextmanager
async def limited_gateway(
    tmp_path: Path, scopes: dict[str, Any], *, model_limits: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None, key_id: str = "00000000000a",
) -> AsyncIterator[tuple[RunningServer, Mock, str]]:  # fmt: skip
    key, configured = key_for(key_id)
    async with mock_service(model="m", ttft=0.0) as upstream:
        model: dict[str, Any] = {"name": "m", "backends": [{"url": upstream.url}]}
        if model_limits:
            model["limits"] = model_limits
        config = {
            "listen": "127.0.0.1:0",
            "auth": {"admin_keys": [ADMIN_KEY], "keys": [{**configured, "scopes": scopes}]},
            "limits": limits or {},
            "logging": {"access_log": False},
            "models": [model],
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        server = await start_gateway(load_config(path), config_path=str(path))
        try:
            yield server, upstream, key
        finally:
            await server.close()


def post(http: aiohttp.ClientSession, url: str, key: str, **body: Any) -> Any:
    payload = {"model": "m", "messages": CHAT, **body}
    headers = {"Authorization": f"Bearer {key}"}
    return http.post(f"{url}/v1/chat/completions", json=payload, headers=headers)


async def refusals(gateway: RunningServer, kind: str) -> float:
    """citadel_rate_limited_total{kind}, as a scrape reads it."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(gateway.url + "/metrics") as response,
    ):
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "citadel_rate_limited_total" and sample.labels == {"kind": kind}:
                return sample.value
    return 0.0


def slots(state: GatewayState) -> dict[str, int]:
    details: dict[str, int] = state.system.lookup(LIMITER).snapshot().details["in_flight"]
    return details


async def test_requests_per_minute_headers_and_an_exact_429(tmp_path: Path) -> None:
    async with (
        limited_gateway(tmp_path, {"rpm": 3}) as (gateway, _, key),
        bounded_client() as http,
    ):
        remaining = []
        first_sent = time.monotonic()
        for _ in range(3):
            async with post(http, gateway.url, key) as response:
                assert response.status == 200
                assert response.headers["x-ratelimit-limit-requests"] == "3"
                remaining.append(response.headers["x-ratelimit-remaining-requests"])
                reset = response.headers["x-ratelimit-reset-requests"]
                assert reset.endswith("s")
                assert not reset.endswith("ms")
        assert remaining == ["2", "1", "0"]
        async with post(http, gateway.url, key) as response:
            body = await response.json()
            assert response.status == 429
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert body["error"]["type"] == "rate_limit_exceeded"
            assert "requests per minute" in body["error"]["message"]
            retry_ms = int(response.headers["retry-after-ms"])
            # GCRA: the first of the three frees its slot 20 s (60/3) after it was taken;
            # the wait is exact: 20 s less the time since then (bounded from the client).
            since_first_ms = (time.monotonic() - first_sent) * 1000
            assert 20_000 - since_first_ms <= retry_ms <= 20_000
            assert int(response.headers["Retry-After"]) == -(-retry_ms // 1000)
        assert await refusals(gateway, "requests") == 1


async def test_tokens_are_reconciled_from_real_usage_for_answers_and_streams(
    tmp_path: Path,
) -> None:
    async with (
        limited_gateway(tmp_path, {"tpm": 2000}) as (gateway, upstream, key),
        bounded_client() as http,
    ):
        # Charged ~1000 up front each (max_tokens), the mock uses 16 completion tokens.
        async with post(http, gateway.url, key, max_tokens=1000) as response:
            assert response.status == 200
            assert int(response.headers["x-ratelimit-remaining-tokens"]) < 1000
        async with post(http, gateway.url, key, max_tokens=1000, stream=True) as response:
            events = (await response.read()).decode()
        assert '"usage"' not in events  # asked for by the gateway, hidden from this client
        assert upstream.state.stats.last_body["stream_options"] == {"include_usage": True}
        async with post(http, gateway.url, key, max_tokens=1000) as response:
            # Without reconciliation two charges of ~1000 would leave nothing for this one.
            assert response.status == 200
            assert int(response.headers["x-ratelimit-remaining-tokens"]) > 900 - 2 * 40
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=READ_TIMEOUT_S
        ) as sdk:
            stream = await sdk.chat.completions.create(
                model="m", messages=CHAT, stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 16


async def test_concurrency_slots_are_freed_on_every_exit_path(tmp_path: Path) -> None:
    async with (
        limited_gateway(tmp_path, {"max_concurrent": 1}) as (gateway, upstream, key),
        bounded_client() as http,
    ):
        state = gateway.runner.app[STATE]
        async with post(http, gateway.url, key) as response:  # success
            assert response.status == 200
        gate = asyncio.Semaphore(0)
        upstream.state.token_gate = gate
        async with post(http, gateway.url, key, stream=True) as held:
            await held.content.readany()  # under way: the slot is taken
            async with post(http, gateway.url, key) as refused:
                assert refused.status == 429
                assert (await refused.json())["error"]["message"].endswith("in 1s.")
                assert refused.headers["Retry-After"] == "1"
                assert refused.headers["retry-after-ms"] == "1000"
            assert slots(state) == {"key:00000000000a": 1}
        # The client went away mid-stream: its handler is cancelled.
        await until(lambda: slots(state) == {}, passes=1_000_000)
        upstream.state.token_gate = None
        upstream.state.set_fault(Fault(mode="error", status=500))  # an upstream failure
        async with post(http, gateway.url, key) as response:
            assert response.status == 502
        upstream.state.set_fault(Fault(mode="cut", after_chunks=1))  # cut mid-stream
        async with post(http, gateway.url, key, stream=True) as response:
            assert b'"error"' in await response.read()
        await until(lambda: slots(state) == {}, passes=1_000_000)
        upstream.state.set_fault(Fault())
        async with post(http, gateway.url, key) as response:
            assert response.status == 200


async def test_the_sdk_retry_honours_retry_after(tmp_path: Path) -> None:
    async with limited_gateway(tmp_path, {"max_concurrent": 1}) as (gateway, upstream, key):
        gate = asyncio.Semaphore(0)
        upstream.state.token_gate = gate
        async with (
            bounded_client() as http,
            post(http, gateway.url, key, stream=True) as held,
            openai.AsyncOpenAI(
                base_url=f"{gateway.url}/v1", api_key=key, max_retries=2, timeout=READ_TIMEOUT_S
            ) as sdk,
        ):
            await held.content.readany()
            started = time.monotonic()
            retried = asyncio.ensure_future(sdk.chat.completions.create(model="m", messages=CHAT))
            async with asyncio.timeout(10):  # the SDK's first try meets the held slot
                # Read through /metrics, which offers no event to wait on.
                while await refusals(gateway, "concurrency") < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            upstream.state.token_gate = None
            gate.release()
            await held.read()  # the held stream ends, freeing the slot
            answer = await retried  # the SDK waited Retry-After (1 s) and tried again
            waited = time.monotonic() - started
        assert answer.choices[0].message.content
        # Its own backoff would have retried after at most 0.5 s: the wait was Retry-After's.
        assert waited >= 0.95
        assert await refusals(gateway, "concurrency") == 1


async def test_model_limits_protect_a_model_across_keys(tmp_path: Path) -> None:
    async with (
        limited_gateway(tmp_path, {}, model_limits={"rpm": 2}) as (gateway, _, key),
        bounded_client() as http,
    ):
        for expected in (200, 200, 429):
            async with post(http, gateway.url, key) as response:
                assert response.status == expected
                if expected == 429:
                    assert "this model" in (await response.json())["error"]["message"]
                else:  # the key has no limits of its own: the headers are the model's
                    assert response.headers["x-ratelimit-limit-requests"] == "2"


async def test_a_stream_without_a_usage_report_is_charged_what_was_relayed(
    tmp_path: Path,
) -> None:
    key, configured = key_for("00000000000b")
    async with mock_service(model="m", ttft=0.0, reports_usage=False) as upstream:
        config = {
            "listen": "127.0.0.1:0",
            "auth": {"keys": [{**configured, "scopes": {"tpm": 3000}}]},
            "logging": {"access_log": False},
            "models": [{"name": "m", "backends": [{"url": upstream.url}]}],
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        server = await start_gateway(load_config(path))
        try:
            async with bounded_client() as http:
                async with post(http, server.url, key, max_tokens=1000, stream=True) as response:
                    assert b"data: [DONE]" in await response.read()
                async with post(http, server.url, key, max_tokens=1) as response:
                    remaining = int(response.headers["x-ratelimit-remaining-tokens"])
        finally:
            await server.close()
    # Charged ~1000 up front; settled at the prompt estimate plus the ~19 events relayed
    # (role, 16 tokens, finish, [DONE]) rather than the budget: ~2,960 left before this one.
    assert 2900 < remaining < 3000


async def test_a_request_that_produced_no_completion_is_charged_nothing(tmp_path: Path) -> None:
    """A charge of 15,000 tokens once stayed after an upstream 500, and the next large
    request got a 429."""
    faults = [
        Fault(mode="error", status=500, count=1),
        Fault(mode="error", status=503, count=1),
        Fault(mode="reset", count=1),
        Fault(mode="malformed", count=1),
        Fault(mode="error", status=400, count=1),
    ]
    async with (
        limited_gateway(tmp_path, {"tpm": 20000}) as (gateway, upstream, key),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        for fault in faults:
            upstream.state.set_fault(fault)
            async with post(http, gateway.url, key, max_tokens=15000) as failed:
                assert failed.status >= 400, fault
            async with post(http, gateway.url, key, max_tokens=15000) as response:
                assert response.status == 200, fault  # the failed one was refunded
                await response.read()


async def test_a_limiter_restart_keeps_the_requests_in_flight(tmp_path: Path) -> None:
    """After a restart of RateLimiterActor, a key with max_concurrent 3 ran 6 streams."""
    async with (
        limited_gateway(tmp_path, {"max_concurrent": 1}) as (gateway, upstream, key),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        state = gateway.runner.app[STATE]
        upstream.state.token_gate = asyncio.Semaphore(0)
        async with post(http, gateway.url, key, stream=True) as held:
            await held.content.readany()  # under way: the slot is taken
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            async with http.post(
                f"{gateway.url}/admin/actors/root/limiter/restart", headers=admin
            ) as restarted:
                assert restarted.status == 200
            async with post(http, gateway.url, key) as refused:
                assert refused.status == 429  # the restarted limiter still counts it
            assert slots(state) == {"key:00000000000a": 1}
        await until(lambda: slots(state) == {}, passes=1_000_000)  # and frees it after
        upstream.state.token_gate = None
        async with post(http, gateway.url, key) as response:
            assert response.status == 200


async def test_token_limits_refuse_with_their_headers_and_all_limits_admit_together(
    tmp_path: Path,
) -> None:
    """tpm refusals, the x-ratelimit-*-tokens headers, and a refusal by one limit (the
    model's) charging none of the others (the key's)."""
    async with (
        limited_gateway(tmp_path, {"tpm": 3000, "rpm": 2}, model_limits={"tpm": 100_000, "rpm": 1})
        as (gateway, _, key),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):  # fmt: skip
        async with post(http, gateway.url, key, max_tokens=2000) as response:
            assert response.status == 200
            assert response.headers["x-ratelimit-limit-tokens"] == "3000"
            assert int(response.headers["x-ratelimit-remaining-tokens"]) <= 1000
            assert response.headers["x-ratelimit-reset-tokens"].endswith("s")
        # The model's rpm (1) refuses the next one: the key's rpm (2) must not be charged.
        async with post(http, gateway.url, key, max_tokens=10) as refused:
            assert refused.status == 429
            assert "this model" in (await refused.json())["error"]["message"]
            assert refused.headers["x-ratelimit-remaining-requests"] == "1"  # key uncharged
        assert await refusals(gateway, "requests") == 1

    async with (
        limited_gateway(tmp_path, {"tpm": 3000}) as (gateway, upstream, key),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        # More tokens than are left while the first charge is still held: a tpm refusal,
        # with the tokens' headers.
        upstream.state.token_gate = asyncio.Semaphore(0)
        async with post(http, gateway.url, key, max_tokens=2900, stream=True) as held:
            await held.content.readany()
            async with post(http, gateway.url, key, max_tokens=2900) as refused:
                assert refused.status == 429
                body = await refused.json()
                assert "tokens per minute" in body["error"]["message"]
                assert refused.headers["x-ratelimit-limit-tokens"] == "3000"
                assert int(refused.headers["x-ratelimit-remaining-tokens"]) < 2900
        upstream.state.token_gate = None
        assert await refusals(gateway, "tokens") == 1


async def test_a_models_own_concurrency_limit_holds_over_every_key(tmp_path: Path) -> None:
    limits = {"max_concurrent": 1}
    async with (
        limited_gateway(tmp_path, {}, model_limits=limits) as (gateway, upstream, key),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        upstream.state.token_gate = asyncio.Semaphore(0)
        async with post(http, gateway.url, key, stream=True) as held:
            await held.content.readany()
            async with post(http, gateway.url, key) as refused:
                assert refused.status == 429
                assert (
                    "this model: concurrent requests" in (await refused.json())["error"]["message"]
                )
        upstream.state.token_gate = None
