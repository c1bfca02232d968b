"""Streams are relayed event by event, and a client that leaves cancels the upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from actors.backend.actor import GetStats
from tests.gateway.harness import API_KEY, Deployment, ModelPlan, bounded_client, deployment

AUTH = {"Authorization": f"Bearer {API_KEY}"}
STREAM_BODY = {
    "model": "mixtral",
    "stream": True,
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "Hello"}],
}


@pytest.fixture
async def gw() -> AsyncIterator[Deployment]:
    plans = [ModelPlan("mixtral-8x7b", served_as="mistral/Mixtral", aliases=("mixtral",))]
    async with deployment(plans) as running:
        yield running


async def read_event(content: aiohttp.StreamReader) -> bytes:
    """Whatever the next read brings; with the gate closed, that is exactly what was sent."""
    return await asyncio.wait_for(content.readany(), timeout=5)


async def test_each_event_is_relayed_as_it_arrives(gw: Deployment) -> None:
    mock = gw.mocks["mixtral-8x7b"][0].state
    gate = asyncio.Semaphore(0)
    mock.token_gate = gate
    async with (
        bounded_client() as http,
        http.post(gw.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        first = await read_event(response.content)  # the role chunk, before any token
        assert first.count(b"data: ") == 1
        assert b'"role": "assistant"' in first
        for _ in range(5):
            gate.release()  # the upstream may send exactly one more token
            event = await read_event(response.content)
            assert event.count(b"data: ") == 1, event  # one event, not held back or batched
            payload = json.loads(event.removeprefix(b"data: "))
            assert payload["model"] == "mixtral-8x7b"
            assert payload["choices"][0]["delta"]["content"]
        rest = await response.content.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_client_disconnect_cancels_the_upstream_request(gw: Deployment) -> None:
    mock = gw.mocks["mixtral-8x7b"][0].state
    mock.token_gate = asyncio.Semaphore(0)  # the upstream would wait forever for the gate
    async with bounded_client() as http:
        response = await http.post(gw.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH)
        await read_event(response.content)
        response.close()  # the client goes away mid-stream
    await asyncio.wait_for(mock.cancelled.wait(), timeout=5)
    assert mock.stats.streams_cancelled == 1
    assert mock.stats.streams_completed == 0
    # The gateway released its lease (a notice, handled ahead of any later ask) in the same
    # step that closed the upstream connection, before the mock could notice the close.
    stats = await gw.state.system.lookup("root/backends/mixtral-8x7b#0").ask(GetStats())
    assert stats.in_flight == 0


async def test_a_crashed_backend_actor_restarts_without_disturbing_others() -> None:
    plans = [ModelPlan("a-model"), ModelPlan("b-model")]
    async with deployment(plans) as gw, bounded_client() as http:
        a_ref = gw.state.system.lookup("root/backends/a-model#0")
        b_ref = gw.state.system.lookup("root/backends/b-model#0")
        body = {"model": "b-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        mock_b = gw.mocks["b-model"][0].state
        gate = asyncio.Semaphore(0)
        mock_b.token_gate = gate
        response = await http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH)
        await read_event(response.content)
        await a_ref.tell(object())  # an unhandled tell crashes a-model's actor
        chat = {"model": "a-model", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(gw.url + "/v1/chat/completions", json=chat, headers=AUTH) as again:
            assert again.status == 200  # served by the restarted actor, same ref
        assert a_ref.snapshot().restarts == 1
        for _ in range(16):
            gate.release()
        rest = await response.content.read()  # b-model's stream never noticed
        assert rest.endswith(b"data: [DONE]\n\n")
        assert b_ref.snapshot().restarts == 0
