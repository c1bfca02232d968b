"""Output guardrails in front of real model servers: llama.cpp's and llama-cpp-python's own
streams (a role chunk, content deltas of a token each, their timings and usage events) are
rewritten by the sliding window and still end as the SDK expects; a block ends a real stream
with content_filter and an error event, and the replica serves the next request."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.process.server import RunningServer, start_gateway
from tests.real.conftest import KEY, Fleet, gateway_config, model

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name five colours of the rainbow, in a sentence."}
]
LONG_WORD = r"\b[A-Za-z]{5,}\b"  # "colours", "orange", "yellow", "green", "purple"...
POLICIES = [
    {"name": "long-words", "rules": [
        {"id": "long", "regex": LONG_WORD, "direction": "output", "action": "redact"}]},
    {"name": "stop-long", "rules": [
        {"id": "long", "regex": LONG_WORD, "direction": "output", "action": "block"}]},
]  # fmt: skip


@pytest.fixture
async def guarded_gateway(fleet: Fleet, tmp_path: Path) -> AsyncIterator[RunningServer]:
    models = [
        model(f"{kind}-{policy}", servers, guardrails=[policy])
        for kind, servers in (("py", fleet.python), ("cpp", fleet.cpp))
        for policy in ("long-words", "stop-long")
    ]
    server = await start_gateway(gateway_config(models, tmp_path, guardrails=POLICIES))
    try:
        yield server
    finally:
        await server.close()


@pytest.mark.parametrize("kind", ["py", "cpp"])
async def test_a_real_stream_and_answer_are_redacted(
    guarded_gateway: RunningServer, kind: str
) -> None:
    async with openai.AsyncOpenAI(
        base_url=guarded_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=120
    ) as client:
        stream = await client.chat.completions.create(
            model=f"{kind}-long-words", messages=QUESTION, temperature=0, max_tokens=40,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        text, finishes, usage = "", [], None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes += [choice.finish_reason] if choice.finish_reason else []
            usage = chunk.usage or usage
        assert "[REDACTED]" in text, text
        assert re.search(LONG_WORD, text.replace("[REDACTED]", "")) is None, text
        assert finishes in (["stop"], ["length"])
        assert usage is not None
        assert usage.completion_tokens > 0
        reply = await client.chat.completions.create(
            model=f"{kind}-long-words", messages=QUESTION, temperature=0, max_tokens=40
        )
        content = reply.choices[0].message.content or ""
        assert "[REDACTED]" in content
        assert re.search(LONG_WORD, content.replace("[REDACTED]", "")) is None


@pytest.mark.parametrize("kind", ["py", "cpp"])
async def test_a_real_stream_is_stopped_and_its_replica_serves_on(
    guarded_gateway: RunningServer, kind: str
) -> None:
    async with openai.AsyncOpenAI(
        base_url=guarded_gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=120
    ) as client:
        text, finishes = "", []

        async def read() -> None:
            nonlocal text
            stream = await client.chat.completions.create(
                model=f"{kind}-stop-long", messages=QUESTION, temperature=0, max_tokens=40,
                stream=True,
            )  # fmt: skip
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finishes.append(choice.finish_reason)

        with pytest.raises(openai.APIError, match="content policy"):
            await read()
        assert finishes[-1] == "content_filter"
        assert re.search(LONG_WORD, text) is None, text
        again = await client.chat.completions.create(
            model=f"{kind}-long-words", messages=QUESTION, temperature=0, max_tokens=8
        )
        assert again.choices[0].finish_reason in ("stop", "length")
