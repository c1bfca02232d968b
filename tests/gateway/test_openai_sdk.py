"""The official openai SDK against the gateway and mock model services, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from collections.abc import AsyncIterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from yarl import URL

from actors.backend.actor import GetStats
from actors.backend.settings import BackendSettings
from gateway.process.config import AuthSettings, GatewayConfig, GatewayModel, LoggingSettings
from gateway.process.server import start_gateway
from tests.gateway.harness import (
    API_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    deployment,
    mock_service,
)

PLANS = (
    ModelPlan(
        "mixtral-8x7b", served_as="mistralai/Mixtral-8x7B-Instruct-v0.1", aliases=("mixtral",)
    ),
    ModelPlan("phi-3-mini", aliases=("phi",)),
)
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def gw() -> AsyncIterator[Deployment]:
    async with deployment(PLANS) as running:
        yield running


@pytest.fixture
async def client(gw: Deployment) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
    ) as sdk:
        yield sdk


async def assert_no_leases(gw: Deployment) -> None:
    for replicas in gw.mocks.values():
        del replicas  # the mocks are not what we check; the backends' actors are
    for snapshot in gw.state.root.snapshot().children[0].children:
        stats = await gw.state.system.lookup(snapshot.path).ask(GetStats())
        assert stats.in_flight == 0, snapshot.path


async def test_chat_completion(gw: Deployment, client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="mixtral", messages=HELLO, max_tokens=5)
    assert reply.model == "mixtral-8x7b"  # the public id, never the upstream's name
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5
    await assert_no_leases(gw)


async def test_chat_completion_with_the_sync_client(gw: Deployment) -> None:
    def call() -> str:
        with openai.OpenAI(
            base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
        ) as sdk:
            reply = sdk.chat.completions.create(model="phi-3-mini", messages=HELLO)
            return reply.choices[0].message.content or ""

    assert await asyncio.to_thread(call)


async def test_streaming_chat_with_usage(gw: Deployment, client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="mixtral",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=6,
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.model == "mixtral-8x7b" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    await assert_no_leases(gw)


async def test_text_completion_plain_and_streamed(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="phi", prompt="Once upon", max_tokens=4)
    assert reply.model == "phi-3-mini"
    assert len(reply.choices[0].text.split()) == 4
    stream = await client.completions.create(
        model="phi-3-mini", prompt="Once upon", max_tokens=3, stream=True
    )
    pieces = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert len("".join(pieces).split()) == 3


async def test_embeddings_float_and_base64(client: openai.AsyncOpenAI) -> None:
    floats = await client.embeddings.create(
        model="mixtral", input=["a", "b"], encoding_format="float"
    )
    assert floats.model == "mixtral-8x7b"
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 64
    # The SDK asks for base64 by default and decodes it: same vectors, same order.
    default = await client.embeddings.create(model="mixtral", input=["a", "b"])
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    raw = await client.embeddings.with_raw_response.create(
        model="mixtral", input="a", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert len(struct.unpack("<64f", base64.b64decode(encoded))) == 64


async def test_models_lists_each_id_once_with_owner(client: openai.AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    ids = [m.id for m in models]
    assert ids == ["mixtral-8x7b", "mixtral", "phi-3-mini", "phi"]
    assert all(m.owned_by == "citadel" for m in models)
    assert (await client.models.retrieve("mixtral")).id == "mixtral"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-5")


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert caught.value.body == {
        "message": "The model 'gpt-4o' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


async def test_invalid_parameter_is_a_bad_request_naming_it(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="phi", messages=HELLO, temperature=3.5)
    assert caught.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="phi",
            messages=[{"role": "wizard", "content": "hi"}],  # type: ignore[list-item, misc]
        )
    assert caught.value.param == "messages[0].role"


async def test_wrong_key_is_an_authentication_error(gw: Deployment) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key="sk-not-a-real-key", max_retries=0, timeout=READ_TIMEOUT_S
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="phi", messages=HELLO)
    assert caught.value.code == "invalid_api_key"


async def test_extra_fields_reach_the_upstream_untouched(
    gw: Deployment, client: openai.AsyncOpenAI
) -> None:
    guided = {"type": "object", "properties": {"answer": {"type": "string"}}}
    await client.chat.completions.create(
        model="mixtral",
        messages=HELLO,
        extra_body={"top_k": 40, "guided_json": guided, "repetition_penalty": 1.1},
    )
    upstream = gw.mocks["mixtral-8x7b"][0].state.stats
    assert upstream.last_body["top_k"] == 40
    assert upstream.last_body["guided_json"] == guided
    assert upstream.last_body["repetition_penalty"] == 1.1
    assert upstream.last_body["model"] == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert "authorization" not in upstream.last_headers  # the client's key stays here


async def test_request_id_is_echoed_and_the_upstream_gets_the_gateways_uuid(
    gw: Deployment, client: openai.AsyncOpenAI
) -> None:
    """The client's id comes back; the model server gets a fresh UUID (a real server,
    llama-cpp-python, refuses any other id), never a client-chosen one."""
    raw = await client.chat.completions.with_raw_response.create(
        model="phi", messages=HELLO, extra_headers={"x-request-id": "trace-42"}
    )
    assert raw.headers["x-request-id"] == "trace-42"
    assert raw.headers["x-citadel-model"] == "phi-3-mini"
    assert raw.headers["x-citadel-backend"] == "phi-3-mini#0"
    sent_up = gw.mocks["phi-3-mini"][0].state.stats.last_headers["x-request-id"]
    assert uuid.UUID(sent_up).version == 4
    generated = await client.chat.completions.with_raw_response.create(model="phi", messages=HELLO)
    assert uuid.UUID(generated.headers["x-request-id"]).version == 4


async def test_a_cookie_an_upstream_sets_never_goes_back_with_the_next_request() -> None:
    """A load balancer before a model server sets a sticky cookie; one session carries every
    client's requests, so a stored cookie would go upstream with everyone's (nor does the
    client get it: the gateway's answer is its own). The replica is named by a host name:
    aiohttp's jar keeps no cookie of an IP address."""
    async with mock_service(model="m", set_cookie="AWSALB=tenant-a; Path=/") as upstream:
        port = URL(upstream.url).port
        config = GatewayConfig(
            listen="127.0.0.1:0",
            auth=AuthSettings(api_keys=(API_KEY,)),
            logging=LoggingSettings(access_log=False),
            models=(
                GatewayModel(name="m", backends=(BackendSettings(url=f"http://localhost:{port}"),)),
            ),
        )
        gateway = await start_gateway(config)
        try:
            client = openai.AsyncOpenAI(
                base_url=f"{gateway.url}/v1", api_key=API_KEY, timeout=READ_TIMEOUT_S, max_retries=0
            )
            async with client:
                first = await client.chat.completions.with_raw_response.create(
                    model="m", messages=HELLO
                )
                assert "set-cookie" not in first.headers
                await client.chat.completions.create(model="m", messages=HELLO)
        finally:
            await gateway.close()
        assert upstream.state.stats.requests == 2
        assert "cookie" not in upstream.state.stats.last_headers
