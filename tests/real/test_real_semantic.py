"""The semantic cache with a real embedding model (all-MiniLM-L6-v2, served by
ops/real_servers/embedding_server.py) and a real chat server (llama-server): paraphrases of a
cached question are answered from the cache; different questions, including near-misses that
share most words but differ in a number, a negation or a direction, are not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from gateway.http.state import STATE
from gateway.process.server import RunningServer, start_gateway
from ops.real_servers.processes import (
    EMBEDDING_NAME,
    RealServer,
    embeddings_python,
    start_embeddings,
)
from tests.real.conftest import KEY, Fleet, gateway_config, model

THRESHOLD = 0.93


@pytest.fixture(scope="module")
def embedder(fleet: Fleet) -> Iterator[RealServer]:
    try:
        python = embeddings_python()
    except RuntimeError as missing:
        pytest.fail(str(missing), pytrace=False)
    server = start_embeddings(python, fleet.log_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def gateway(
    fleet: Fleet, embedder: RealServer, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    semantic = {"embedding_model": "embed", "threshold": THRESHOLD}
    config = gateway_config(
        [
            model("smol-cpp", fleet.cpp, cache={"semantic": semantic}),
            {"name": "embed", "backends": [{"url": embedder.url, "model": EMBEDDING_NAME}]},
        ],
        tmp_path,
    )
    server = await start_gateway(config)
    try:
        yield server
    finally:
        await server.close()


async def ask(client: openai.AsyncOpenAI, question: str) -> tuple[str, str]:
    raw = await client.chat.completions.with_raw_response.create(
        model="smol-cpp",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=8,
    )
    return raw.headers.get("x-citadel-cache", ""), raw.parse().choices[0].message.content or ""


@pytest.mark.parametrize(
    ("cached", "asked", "same"),
    [
        ("What is the capital of France?", "What's the capital city of France?", True),
        ("What is the capital of France?", "Which city is the capital of France?", True),
        ("What is the capital of France?", "Tell me the capital of France.", True),
        ("Convert 5 kilometres to miles.", "Convert 5 kilometers into miles.", True),
        ("What is the capital of France?", "What is the capital of Spain?", False),
        ("What is the capital of France?", "What is the population of France?", False),
        ("What is the capital of France?", "What is not the capital of France?", False),
        ("What is the capital of France?", "What was the capital of France in 1800?", False),
        ("What is the capital of France?", "Is Paris the capital of France?", False),
        ("Convert 5 kilometres to miles.", "Convert 6 kilometres to miles.", False),
        ("Convert 5 kilometres to miles.", "Convert 5 miles to kilometres.", False),
    ],
)
async def test_paraphrases_hit_and_different_questions_do_not(
    gateway: RunningServer, cached: str, asked: str, same: bool
) -> None:
    cache = gateway.runner.app[STATE].cache
    assert cache is not None
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=120
    ) as client:
        first = await ask(client, cached)
        assert first[0] == "miss"
        await cache.flush()
        second = await ask(client, asked)
        assert second[0] == ("hit" if same else "miss")
        if same:
            assert second[1] == first[1]
