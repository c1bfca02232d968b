"""Promises the docs make that deliberate bugs once slipped past the whole suite: each test
here names the mutation it catches."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from actors.router.actor import RetryBudgetSettings, RoutingSettings
from actors.router.balancer import Policy
from actors.router.rules import RoutingRule, RuleCondition, VirtualModelSettings
from gateway.mock.faults import Fault
from tests.gateway.harness import API_KEY, ModelPlan, deployment

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]
TIMEOUT = aiohttp.ClientTimeout(total=30)


async def chat(
    http: aiohttp.ClientSession, url: str, **body: Any
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    payload = {"model": "m", "messages": HELLO, **body}
    async with http.post(url + "/v1/chat/completions", json=payload, headers=AUTH) as response:
        return response.status, response.headers, await response.read()


async def test_streams_fail_over_before_their_first_byte(http: aiohttp.ClientSession) -> None:
    """Catches: failover skipped for `stream: true` (1 of 8 streams got a 502 with a
    healthy second replica)."""
    # Round robin sends every other stream to the broken replica first.
    routing = RoutingSettings(policy=Policy.WEIGHTED_ROUND_ROBIN)
    async with deployment([ModelPlan("m", replicas=2, routing=routing)]) as gw:
        gw.mocks["m"][0].state.set_fault(Fault(mode="reset"))
        results = await asyncio.gather(*(chat(http, gw.url, stream=True) for _ in range(8)))
        for status, headers, body in results:
            assert status == 200
            assert headers["x-citadel-backend"] == "m#1"  # type: ignore[index]
            assert body.rstrip().endswith(b"data: [DONE]")
        assert gw.mocks["m"][0].state.stats.requests >= 4  # half tried the broken one first


async def test_a_stream_that_ends_without_done_gets_an_error_event(
    http: aiohttp.ClientSession,
) -> None:
    """Catches: a clean end of the upstream body without [DONE] relayed as a silent cut."""
    async with deployment([ModelPlan("m")]) as gw:
        gw.mocks["m"][0].state.set_fault(Fault(mode="no_done"))
        status, _, body = await chat(http, gw.url, stream=True)
        assert status == 200
        assert b"data: [DONE]" not in body
        assert body.rstrip().endswith(b"}")
        assert b"ended the stream before it was complete" in body


async def test_a_relayed_upstream_400_names_the_public_model(http: aiohttp.ClientSession) -> None:
    """Catches: the upstream's model name left in a relayed 4xx message."""
    plan = ModelPlan("m", served_as="org/Secret-Model-v1")
    async with deployment([plan]) as gw:
        message = "max_tokens is too large for org/Secret-Model-v1: at most 100."
        gw.mocks["m"][0].state.set_fault(Fault(mode="error", status=400, message=message))
        status, _, body = await chat(http, gw.url)
        assert status == 400
        assert b"max_tokens is too large for m: at most 100." in body
        assert b"Secret-Model" not in body


async def test_an_upstream_429_is_retried_then_answered_503_upstream_overloaded(
    http: aiohttp.ClientSession,
) -> None:
    """Catches: an upstream 429 turned into a non-retried 502."""
    routing = RoutingSettings(retry_budget=RetryBudgetSettings(min_retries=5))
    async with deployment([ModelPlan("m", replicas=2, routing=routing)]) as gw:
        for mock in gw.mocks["m"]:
            mock.state.set_fault(Fault(mode="error", status=429))
        status, headers, body = await chat(http, gw.url)
        assert status == 503
        assert b'"upstream_overloaded"' in body
        assert headers["Retry-After"] == "1"  # type: ignore[index]
        assert [mock.state.stats.requests for mock in gw.mocks["m"]] == [1, 1]  # retried once


async def test_routing_traits_come_from_the_http_request(http: aiohttp.ClientSession) -> None:
    """Catches: traits hard-wired (no tools, no headers) when built from a real request."""
    rules = (
        RoutingRule(name="tools", when=RuleCondition(has_tools=True), prefer=("tools-model",)),
        RoutingRule(
            name="team",
            when=RuleCondition(header={"x-team": "research"}),
            prefer=("research-model",),
        ),
        RoutingRule(name="json", when=RuleCondition(json_mode=True), prefer=("research-model",)),
    )
    virtual = VirtualModelSettings(name="auto", candidates=("plain",), rules=rules)
    plans = [ModelPlan("plain"), ModelPlan("tools-model"), ModelPlan("research-model")]
    async with deployment(plans, virtual_models=(virtual,)) as gw:
        tool = {"type": "function", "function": {"name": "lookup"}}
        cases: list[tuple[dict[str, Any], dict[str, str], str]] = [
            ({}, {}, "plain"),
            ({"tools": [tool]}, {}, "tools-model"),
            ({}, {"x-team": "research"}, "research-model"),
            ({"response_format": {"type": "json_object"}}, {}, "research-model"),
        ]
        for extra, headers, expected in cases:
            payload = {"model": "auto", "messages": HELLO, **extra}
            async with http.post(
                gw.url + "/v1/chat/completions", json=payload, headers={**AUTH, **headers}
            ) as response:
                assert response.status == 200
                assert response.headers["x-citadel-model"] == expected, (extra, headers)
