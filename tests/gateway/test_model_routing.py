"""Model choice over HTTP: the virtual model `auto`, context-window fallback, and fallback
chains, each saying in a header which model served and why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from actors.backend.probe import HealthSettings
from actors.router.rules import RoutingRule, RuleCondition, VirtualModelSettings
from gateway.mock.faults import Fault
from tests.gateway.harness import API_KEY, Deployment, ModelPlan, bounded_client, deployment

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROBES = HealthSettings(interval=0.02, jitter=0.1, healthy_threshold=1, unhealthy_threshold=1)
AUTO = VirtualModelSettings(
    name="auto",
    candidates=("small", "large"),
    rules=(RoutingRule(name="json", when=RuleCondition(json_mode=True), prefer=("large",)),),
)


@pytest.fixture
async def gw() -> AsyncIterator[Deployment]:
    plans = [
        ModelPlan("small", context_window=1000, fallbacks=("large",), context_fallback="large",
                  health=PROBES),
        ModelPlan("large", served_as="org/Large-70B", context_window=32000, health=PROBES),
    ]  # fmt: skip
    async with deployment(plans, virtual_models=(AUTO,)) as running:
        yield running


async def ask(gw: Deployment, model: str, content: str, **extra: object) -> aiohttp.ClientResponse:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    async with bounded_client() as http:
        response = await http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH)
        await response.read()
        return response


async def test_auto_routes_by_length_and_says_why(gw: Deployment) -> None:
    short = await ask(gw, "auto", "hello")
    assert short.status == 200
    assert short.headers["x-citadel-model"] == "small"
    assert short.headers["x-citadel-route"].startswith("auto: default order")
    long = await ask(gw, "auto", "word " * 2000)  # ~2,500 tokens: over small's 1,000
    assert long.headers["x-citadel-model"] == "large"
    assert (await long.json())["model"] == "large"  # never the upstream's org/Large-70B


async def test_auto_rule_on_json_mode(gw: Deployment) -> None:
    response = await ask(gw, "auto", "hi", response_format={"type": "json_object"})
    assert response.headers["x-citadel-model"] == "large"
    assert "rule json" in response.headers["x-citadel-route"]


async def test_context_overflow_goes_to_the_larger_model(gw: Deployment) -> None:
    response = await ask(gw, "small", "word " * 2000)
    assert response.status == 200
    assert response.headers["x-citadel-model"] == "large"
    assert response.headers["x-citadel-route"].startswith("context: ~")
    assert gw.mocks["small"][0].state.stats.requests == 0


async def test_fallback_chain_when_the_model_is_down_unless_the_client_opts_out(
    gw: Deployment,
) -> None:
    small = gw.mocks["small"][0].state
    small.set_fault(Fault(mode="unhealthy"))
    await asyncio.wait_for(small.wait_health_checks(small.health_checks + 2), timeout=5)
    response = await ask(gw, "small", "hello")
    assert response.status == 200
    assert response.headers["x-citadel-model"] == "large"
    assert response.headers["x-citadel-route"] == "fallback: no usable replica of small"
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        bounded_client() as http,
        http.post(
            gw.url + "/v1/chat/completions",
            json=body,
            headers={**AUTH, "x-citadel-no-fallback": "1"},
        ) as opted_out,
    ):
        # Panic mode: small's only replica is unhealthy, so it is tried anyway (it serves).
        assert opted_out.headers["x-citadel-model"] == "small"


async def test_virtual_model_is_listed(gw: Deployment) -> None:
    async with (
        bounded_client() as http,
        http.get(gw.url + "/v1/models", headers=AUTH) as response,
    ):
        ids = [m["id"] for m in (await response.json())["data"]]
    assert ids == ["small", "large", "auto"]
