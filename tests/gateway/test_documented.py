"""Promises the docs make that had no test: the upstream's own bearer token, the request's
deadline and total timeout, 405's Allow, model ids with a slash, the access log's fields,
the 499 class, and the metadata and prompt-size routing conditions."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from actors.backend.settings import BackendTimeouts
from actors.router.actor import RoutingSettings
from actors.router.rules import RoutingRule, RuleCondition, VirtualModelSettings
from gateway.mock.faults import Fault
from gateway.process.config import LoggingSettings
from gateway.process.observability import BufferedLineLogger
from tests.gateway.harness import API_KEY, ModelPlan, deployment
from tests.gateway.test_metrics import scrape

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]
TIMEOUT = aiohttp.ClientTimeout(total=30)


async def test_a_backends_api_key_goes_upstream_as_bearer_and_the_clients_never(
    http: aiohttp.ClientSession,
) -> None:
    async with deployment([ModelPlan("m", backend={"api_key": "upstream-secret-123"})]) as gw:
        body = {"model": "m", "messages": HELLO}
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 200
        headers = gw.mocks["m"][0].state.stats.last_headers
        assert headers["authorization"] == "Bearer upstream-secret-123"


async def test_the_deadline_and_the_total_timeout_give_504(http: aiohttp.ClientSession) -> None:
    deadline = RoutingSettings(deadline=0.3)
    plans = [
        ModelPlan("late", routing=deadline),  # every try together: 0.3 s
        ModelPlan("long", timeouts=BackendTimeouts(first_byte=60, idle=60, total=0.3)),
    ]
    async with deployment(plans) as gw:
        for model in ("late", "long"):
            gw.mocks[model][0].state.set_fault(Fault(mode="hang"))
            body = {"model": model, "messages": HELLO}
            async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
                assert r.status == 504, model
                assert (await r.json())["error"]["code"] == "upstream_timeout"


async def test_a_wrong_method_is_405_with_allow(http: aiohttp.ClientSession) -> None:
    async with (
        deployment([ModelPlan("m")]) as gw,
        http.get(gw.url + "/v1/chat/completions", headers=AUTH) as response,
    ):
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_a_model_id_may_hold_a_slash(http: aiohttp.ClientSession) -> None:
    async with (
        deployment([ModelPlan("org/model-7b")]) as gw,
        http.get(gw.url + "/v1/models/org/model-7b", headers=AUTH) as response,
    ):
        assert response.status == 200
        assert (await response.json())["id"] == "org/model-7b"
    async with deployment([ModelPlan("org/model-7b")]) as gw:
        body = {"model": "org/model-7b", "messages": HELLO}
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 200
            assert r.headers["x-citadel-backend"] == "org%2Fmodel-7b#0"


async def test_the_access_log_says_what_happened_and_a_departed_client_is_499(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    logging = LoggingSettings(access_log=True)
    async with deployment([ModelPlan("m")], logging=logging) as gw:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            body = {"model": "m", "messages": HELLO}
            headers = {**AUTH, "X-Request-ID": "audit-1"}
            async with http.post(
                gw.url + "/v1/chat/completions", json=body, headers=headers
            ) as response:
                assert response.status == 200
        upstream = gw.mocks["m"][0].state
        upstream.token_gate = asyncio.Semaphore(0)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            streamed = {**body, "stream": True}
            response = await http.post(gw.url + "/v1/chat/completions", json=streamed, headers=AUTH)
            await response.content.readany()
            response.close()  # the client leaves mid-stream
        async with asyncio.timeout(10):
            await upstream.cancelled.wait()
        metrics = await scrape(gw)
    production_logging.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line[:1] == "{"]
    access = [line for line in lines if line.get("event") == "request"]
    first = next(line for line in access if line["request_id"] == "audit-1")
    assert {
        key: first[key]
        for key in ("method", "path", "status", "model", "served_model", "backend", "attempts")
    } == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "model": "m",
        "served_model": "m",
        "backend": "m#0",
        "attempts": 1,
    }
    assert first["key_id"] == "static-0"
    assert first["prompt_tokens"] > 0
    assert first["completion_tokens"] == 16
    assert first["latency_ms"] > 0
    assert any(line["status"] == 499 for line in access)
    key = (
        "citadel_requests_total",
        (
            ("backend", "m#0"),
            ("endpoint", "/v1/chat/completions"),
            ("model", "m"),
            ("status", "499"),
        ),
    )
    assert metrics[key] == 1.0


async def test_metadata_and_prompt_size_route_a_virtual_model(http: aiohttp.ClientSession) -> None:
    rules = (
        RoutingRule(name="long", when=RuleCondition(min_prompt_tokens=200), prefer=("big",)),
        RoutingRule(name="team", when=RuleCondition(metadata={"team": "x"}), prefer=("team",)),
    )
    virtual = VirtualModelSettings(name="auto", candidates=("small",), rules=rules)
    plans = [ModelPlan("small"), ModelPlan("big"), ModelPlan("team")]
    async with deployment(plans, virtual_models=(virtual,)) as gw:
        cases: list[tuple[dict[str, object], str]] = [
            ({"messages": HELLO}, "small"),
            ({"messages": [{"role": "user", "content": "word " * 400}]}, "big"),
            ({"messages": HELLO, "metadata": {"team": "x"}}, "team"),
            ({"messages": HELLO, "metadata": {"team": "y"}}, "small"),
        ]
        for extra, expected in cases:
            body: dict[str, object] = {"model": "auto"}
            body.update(extra)
            async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
                assert r.status == 200
                assert r.headers["x-citadel-model"] == expected, extra


async def test_a_departed_client_gives_back_the_half_open_trial(
    http: aiohttp.ClientSession,
) -> None:
    """The one trial a half-open circuit allows must come back when its client leaves, or
    the replica stays refused though nothing was learnt about it."""
    from actors.backend.breaker import BreakerSettings

    breaker = BreakerSettings(consecutive_failures=1, ejection=0.2, half_open_trials=1)
    async with deployment([ModelPlan("m", breaker=breaker)]) as gw:
        upstream = gw.mocks["m"][0].state
        upstream.set_fault(Fault(mode="error", status=500, count=1))
        body = {"model": "m", "messages": HELLO}
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 502  # the circuit opens
        load = gw.state.layout.current.loads["m#0"]
        # The ejection's own clock is the subject here.
        await asyncio.sleep(max(0.0, load.blocked_until - time.monotonic()) + 0.02)
        upstream.token_gate = asyncio.Semaphore(0)
        trial = await http.post(
            gw.url + "/v1/chat/completions", json={**body, "stream": True}, headers=AUTH
        )
        assert trial.status == 200  # the trial, under way
        await trial.content.readany()
        trial.close()  # its client leaves: no verdict on the replica
        async with asyncio.timeout(10):
            await upstream.cancelled.wait()
        upstream.token_gate = None
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 200  # the trial came back, and this one closes the circuit
