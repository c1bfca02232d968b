"""Every error a client can see is an OpenAI error body with the right status, and nothing
from an upstream's internals leaks through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from actors.backend.actor import GetStats
from actors.backend.settings import BackendTimeouts
from gateway.mock.faults import Fault
from tests.gateway.harness import (
    API_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
FAST_TIMEOUTS = BackendTimeouts(connect=1.0, first_byte=0.3, idle=0.3, total=5.0)


@pytest.fixture
async def gw() -> AsyncIterator[Deployment]:
    plans = [ModelPlan("phi-3-mini", served_as="microsoft/Phi-3-mini", timeouts=FAST_TIMEOUTS)]
    async with deployment(plans, max_body_bytes=4096) as running:
        yield running


@pytest.fixture
async def client(gw: Deployment) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
    ) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with bounded_client() as session:
        yield session


def set_fault(gw: Deployment, **fault: Any) -> None:
    gw.mocks["phi-3-mini"][0].state.set_fault(Fault(**fault))


async def in_flight(gw: Deployment) -> int:
    stats = await gw.state.system.lookup("root/backends/phi-3-mini#0").ask(GetStats())
    return int(stats.in_flight)


def assert_openai_error(body: dict[str, Any], code: str | None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "code"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"model": "phi"}', 400, None),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model":"phi","messages":[],"stream":"yes"}',
            400,
            None,
        ),
        ("GET", "/v1/nowhere", None, 404, "unknown_url"),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/chat/completions", b"x" * 5000, 413, "request_too_large"),
    ],
)
async def test_edge_errors_are_openai_bodies(
    gw: Deployment,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    data: bytes | None,
    status: int,
    code: str | None,
) -> None:
    async with http.request(method, gw.url + path, data=data, headers=AUTH) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        assert_openai_error(await response.json(), code)
        assert response.headers["x-request-id"]


async def test_missing_field_names_the_param(gw: Deployment, http: aiohttp.ClientSession) -> None:
    async with http.post(
        gw.url + "/v1/chat/completions", data=b'{"model": "phi"}', headers=AUTH
    ) as response:
        body = await response.json()
    assert body["error"]["param"] == "messages"
    assert body["error"]["message"] == "Missing required parameter: 'messages'."


async def test_missing_key_is_401(gw: Deployment, http: aiohttp.ClientSession) -> None:
    async with http.post(gw.url + "/v1/chat/completions", json={}) as response:
        assert response.status == 401
        assert_openai_error(await response.json(), "invalid_api_key")


async def test_upstream_500_with_traceback_is_a_clean_502(
    gw: Deployment, client: openai.AsyncOpenAI
) -> None:
    set_fault(gw, mode="error", status=500)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="phi-3-mini", messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    text = str(caught.value.body)
    assert "Traceback" not in text
    assert "site-packages" not in text
    assert "CUDA" not in text
    assert await in_flight(gw) == 0


async def test_upstream_400_message_is_relayed_with_the_public_model_name(
    gw: Deployment, http: aiohttp.ClientSession
) -> None:
    # The mock rejects a model it does not serve with vLLM's 404 body; a 400 from upstream
    # about the request is relayed (safe messages only) with the name rewritten.
    gw.mocks["phi-3-mini"][0].state.settings.model = "something-else"
    async with http.post(
        gw.url + "/v1/chat/completions",
        json={"model": "phi-3-mini", "messages": HELLO},
        headers=AUTH,
    ) as response:
        assert response.status == 502  # an upstream that does not serve the model: our config
        body = await response.json()
    assert "microsoft/Phi-3-mini" not in str(body)


async def test_hanging_upstream_is_a_504(gw: Deployment, client: openai.AsyncOpenAI) -> None:
    set_fault(gw, mode="hang")
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="phi-3-mini", messages=HELLO)
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert await in_flight(gw) == 0


async def test_reset_connection_is_a_502(gw: Deployment, client: openai.AsyncOpenAI) -> None:
    set_fault(gw, mode="reset")
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="phi-3-mini", messages=HELLO)
    assert caught.value.status_code == 502
    assert await in_flight(gw) == 0


async def test_malformed_upstream_body_is_a_502(gw: Deployment, client: openai.AsyncOpenAI) -> None:
    set_fault(gw, mode="malformed")
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="phi-3-mini", messages=HELLO)
    assert caught.value.status_code == 502
    assert "html" not in str(caught.value.body).lower()


async def test_unreachable_upstream_is_a_502(gw: Deployment, client: openai.AsyncOpenAI) -> None:
    await gw.mocks["phi-3-mini"][0].server.close()
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="phi-3-mini", messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert await in_flight(gw) == 0


async def test_stream_error_before_the_first_event_is_an_http_error(
    gw: Deployment, client: openai.AsyncOpenAI
) -> None:
    set_fault(gw, mode="error", status=503)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="phi-3-mini", messages=HELLO, stream=True)
    assert caught.value.status_code == 502


async def test_stream_cut_mid_way_ends_with_an_error_event(
    gw: Deployment, client: openai.AsyncOpenAI
) -> None:
    set_fault(gw, mode="cut", after_chunks=3)
    stream = await client.chat.completions.create(model="phi-3-mini", messages=HELLO, stream=True)
    received = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert len(received) == 4  # the role chunk and three tokens
    assert "ended the stream before it was complete" in caught.value.message
    assert await in_flight(gw) == 0


async def test_error_inside_a_200_stream_is_relayed_cleanly(
    gw: Deployment, client: openai.AsyncOpenAI
) -> None:
    set_fault(gw, mode="stream_error", after_chunks=2)
    stream = await client.chat.completions.create(model="phi-3-mini", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert "Traceback" not in caught.value.message
    assert caught.value.message == "The model service reported an error during generation."


async def test_idle_stream_times_out_with_an_error_event(
    gw: Deployment, client: openai.AsyncOpenAI
) -> None:
    mock = gw.mocks["phi-3-mini"][0].state
    mock.token_gate = asyncio.Semaphore(1)  # one token, then silence past the idle timeout
    stream = await client.chat.completions.create(model="phi-3-mini", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert caught.value.message == "The model service did not answer in time."
    assert await in_flight(gw) == 0
