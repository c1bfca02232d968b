"""The response cache in front of real model servers: llama.cpp's and llama-cpp-python's own
answers and streams (their extra fields, usage and timings events included), assembled and
replayed in the other format. (Not compared with a second answer from the servers: two
replicas of llama-cpp-python answer the same greedy request differently.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.http.state import STATE
from gateway.process.server import RunningServer, start_gateway
from tests.real.conftest import KEY, Fleet, gateway_config, model

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
async def cached_gateway(fleet: Fleet, tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = gateway_config(
        [
            model("smol-py", fleet.python, cache={"enabled": True}),
            model("smol-cpp", fleet.cpp, cache={"enabled": True}),
        ],
        tmp_path,
    )
    server = await start_gateway(config)
    try:
        yield server
    finally:
        await server.close()


async def chat(
    client: openai.AsyncOpenAI, name: str, *, stream: bool, max_tokens: int = 12
) -> tuple[str, str]:
    """(x-citadel-cache, the answer's text)."""
    raw = await client.chat.completions.with_raw_response.create(
        model=name, messages=QUESTION, temperature=0, max_tokens=max_tokens, stream=stream,
        stream_options={"include_usage": True} if stream else None,
    )  # fmt: skip
    reply = raw.parse()
    status = raw.headers.get("x-citadel-cache", "")
    if isinstance(reply, openai.types.chat.ChatCompletion):
        return status, reply.choices[0].message.content or ""
    text = ""
    async for chunk in reply:
        assert chunk.model == name
        text += "".join(choice.delta.content or "" for choice in chunk.choices)
    return status, text


@pytest.mark.parametrize("name", ["smol-py", "smol-cpp"])
async def test_a_real_servers_stream_is_cached_and_served_in_both_formats(
    cached_gateway: RunningServer, name: str
) -> None:
    state = cached_gateway.runner.app[STATE]
    assert state.cache is not None
    async with openai.AsyncOpenAI(
        base_url=cached_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=120
    ) as client:
        status, streamed = await chat(client, name, stream=True)
        assert status == "miss"
        assert streamed
        await state.cache.flush()
        assert await chat(client, name, stream=False) == ("hit", streamed)
        assert await chat(client, name, stream=True) == ("hit", streamed)
        status, answered = await chat(client, name, stream=False, max_tokens=10)
        assert status == "miss"
        assert answered
        await state.cache.flush()
        assert await chat(client, name, stream=True, max_tokens=10) == ("hit", answered)
