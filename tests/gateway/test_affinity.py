"""Prefix affinity: a conversation stays on one replica (its prefix cache stays warm) until
that replica is overloaded or unusable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from actors.router.actor import RoutingSettings
from tests.gateway.harness import API_KEY, Deployment, ModelPlan, bounded_client, deployment

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SYSTEM = {"role": "system", "content": "You are a careful assistant for the billing team."}


@pytest.fixture
async def gw() -> AsyncIterator[Deployment]:
    routing = RoutingSettings(prefix_affinity=True, affinity_min_in_flight=2)
    async with deployment([ModelPlan("m", replicas=3, routing=routing)]) as running:
        yield running


def conversation(first: str, turns: int) -> list[dict[str, str]]:
    messages = [SYSTEM, {"role": "user", "content": first}]
    for turn in range(turns):
        messages += [
            {"role": "assistant", "content": f"answer {turn}"},
            {"role": "user", "content": f"follow-up {turn}"},
        ]
    return messages


async def served_by(http: aiohttp.ClientSession, gw: Deployment, messages: object) -> str:
    body = {"model": "m", "messages": messages, "max_tokens": 1}
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status == 200
        return response.headers["x-citadel-backend"]


async def test_a_conversation_stays_on_one_replica(gw: Deployment) -> None:
    async with bounded_client() as http:
        backends = {
            await served_by(http, gw, conversation("Why is my invoice late?", turns))
            for turns in range(12)
        }
        assert len(backends) == 1
        spread = {
            await served_by(http, gw, conversation(f"question number {n}", 0)) for n in range(24)
        }
        assert len(spread) >= 2  # different conversations land on different replicas


async def test_affinity_gives_way_under_overload(gw: Deployment) -> None:
    messages = conversation("Why is my invoice late?", 0)
    async with bounded_client() as http:
        sticky = await served_by(http, gw, messages)
        index = int(sticky.rsplit("#", 1)[1])
        gw.mocks["m"][index].state.token_gate = asyncio.Semaphore(0)
        held = []
        for _ in range(2):  # two streams parked on the sticky replica
            body = {"model": "m", "messages": messages, "stream": True}
            response = await http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH)
            assert response.headers["x-citadel-backend"] == sticky
            await response.content.readany()
            held.append(response)
        # Two in flight there (its floor), none elsewhere: over 1.5x its fair share. It yields.
        assert await served_by(http, gw, messages) != sticky
        for response in held:
            response.close()


async def test_affinity_gives_way_when_the_replica_is_unusable(gw: Deployment) -> None:
    messages = conversation("Why is my invoice late?", 0)
    async with bounded_client() as http:
        sticky = await served_by(http, gw, messages)
        load = gw.state.system.lookup(f"root/backends/{sticky}")
        assert load is not None
        index = int(sticky.rsplit("#", 1)[1])
        await gw.mocks["m"][index].kill()
        assert await served_by(http, gw, messages) != sticky  # connect failure, next replica
