"""The mock model service: vLLM-like answers, and faults switched over HTTP at run time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.gateway.harness import Mock, bounded_client, mock_service

CHAT = {"model": "org/served", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
async def mock() -> AsyncIterator[Mock]:
    async with mock_service(model="org/served", ttft=0.0) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with bounded_client() as session:
        yield session


async def test_answers_like_vllm(mock: Mock, http: aiohttp.ClientSession) -> None:
    async with http.post(mock.url + "/v1/chat/completions", json=CHAT) as response:
        body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "org/served"
    assert body["usage"]["completion_tokens"] == 3
    async with http.post(mock.url + "/v1/chat/completions", json={**CHAT, "model": "x"}) as wrong:
        assert wrong.status == 404
        assert (await wrong.json())["object"] == "error"
    async with http.get(mock.url + "/metrics") as metrics:
        assert 'vllm:num_requests_running{model_name="org/served"} 0' in await metrics.text()


async def test_fault_is_switched_over_http_for_a_number_of_requests(
    mock: Mock, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        mock.url + "/mock/fault", json={"mode": "error", "status": 503, "count": 2}
    ) as set_it:
        assert set_it.status == 200
    statuses = []
    for _ in range(3):
        async with http.post(mock.url + "/v1/chat/completions", json=CHAT) as response:
            statuses.append(response.status)
    assert statuses == [503, 503, 200]
    async with http.get(mock.url + "/mock/stats") as stats:
        assert (await stats.json())["requests"] == 3
    async with http.post(mock.url + "/mock/fault", json={"mode": "explode"}) as bad:
        assert bad.status == 400
