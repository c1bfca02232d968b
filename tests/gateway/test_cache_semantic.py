"""The semantic cache with the official SDK and mock services: a question asked again in other
words is answered from the cache; other tenants, other parameters, near-misses and long
conversations are not; an embedding model that fails or is slow is a miss, never an error.
(The mock embeds a text's words: the same words in any case and punctuation embed alike.
Real paraphrases, with a real embedding model: tests/real/test_real_semantic.py.)"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.cache.settings import CachePolicy, CacheSettings, SemanticPolicy
from gateway.mock.faults import Fault
from gateway.process.config import ConfigError, parse_config
from gateway.process.observability import BufferedLineLogger
from tests.gateway.harness import Deployment, ModelPlan, deployment
from tests.gateway.test_cache import KEY_B, keys, sdk, stored
from tests.gateway.test_metrics import scrape


@asynccontextmanager
async def semantic(cache: CacheSettings | None = None, **policy: Any) -> AsyncIterator[Deployment]:
    settings = SemanticPolicy(**{"embedding_model": "embed", "threshold": 0.9, **policy})
    plans = [
        ModelPlan("m", cache=CachePolicy(semantic=settings), mock={"ttft": 0.0}),
        ModelPlan("embed", mock={"ttft": 0.0}),
    ]
    async with deployment(plans, auth=keys(), cache=cache) as gw:
        yield gw


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


async def ask(
    client: openai.AsyncOpenAI, messages: list[ChatCompletionMessageParam], **params: Any
) -> tuple[str, str | None, str]:
    """(x-citadel-cache, x-citadel-cache-similarity, the answer)."""
    params = {"temperature": 0, "max_tokens": 8, **params}
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=messages, **params
    )
    reply = raw.parse()
    return (
        raw.headers.get("x-citadel-cache", ""),
        raw.headers.get("x-citadel-cache-similarity"),
        reply.choices[0].message.content or "",
    )


def upstream(gw: Deployment) -> int:
    return gw.mocks["m"][0].state.stats.requests


async def semantic_results(gw: Deployment) -> dict[str, float]:
    return {
        labels[1][1]: value
        for (name, labels), value in (await scrape(gw)).items()
        if name == "citadel_cache_semantic_lookups_total"
    }


async def test_a_question_asked_again_in_other_words_is_answered_from_the_cache() -> None:
    async with semantic() as gw, sdk(gw) as client:
        first = await ask(client, user("What is the capital of France?"))
        await stored(gw)
        again = await ask(client, user("what is THE capital of france"))
        assert first[0] == "miss"
        assert again[0] == "hit"
        assert again[1] is not None
        assert float(again[1]) >= 0.9
        assert again[2] == first[2]
        assert upstream(gw) == 1
        assert (await semantic_results(gw)).get("hit") == 1.0


async def test_another_tenant_or_other_parameters_are_not_answered() -> None:
    async with semantic() as gw, sdk(gw) as client:
        await ask(client, user("What is the capital of France?"))
        await stored(gw)
        async with sdk(gw, KEY_B) as other:
            assert (await ask(other, user("what is the capital of france")))[0] == "miss"
        assert (await ask(client, user("what is the capital of france"), max_tokens=9))[0] == (
            "miss"
        )
        system: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": "Answer in French."},
            *user("what is the capital of france"),
        ]
        assert (await ask(client, system))[0] == "miss"  # the system prompt is embedded too
        assert upstream(gw) == 4


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("Convert 5 kilometres to miles", "Convert 6 kilometres to miles"),
        ("Convert 5 kilometres to miles", "convert 5 miles to kilometres"),
        ("Is Paris the capital of France", "Is Paris not the capital of France"),
    ],
)
async def test_near_misses_are_not_answered_with_each_others_answer(
    cached: str, asked: str
) -> None:
    async with semantic(threshold=0.5) as gw, sdk(gw) as client:
        await ask(client, user(cached))
        await stored(gw)
        assert (await ask(client, user(asked)))[0] == "miss"
        assert upstream(gw) == 2


async def test_conversations_longer_than_max_turns_are_not_looked_up() -> None:
    history: list[ChatCompletionMessageParam] = [
        *user("Hi"), {"role": "assistant", "content": "Hello!"}, *user("Capital of France?"),
    ]  # fmt: skip
    async with semantic(max_turns=1) as gw, sdk(gw) as client:
        await ask(client, history)
        await stored(gw)
        assert (await ask(client, [*history[:2], *user("capital of FRANCE")]))[0] == "miss"
        assert await semantic_results(gw) == {}
        assert gw.mocks["embed"][0].state.stats.requests == 0


async def test_an_embedding_model_that_fails_or_hangs_is_a_miss_not_an_error(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    async with semantic(timeout=0.3) as gw, sdk(gw) as client:
        embedder = gw.mocks["embed"][0].state
        embedder.set_fault(Fault(mode="error", status=500))
        status, _, text = await ask(client, user("What is the capital of France?"))
        assert status == "miss"
        assert text
        embedder.set_fault(Fault(mode="hang"))
        started = time.monotonic()
        status, _, text = await ask(client, user("What is the capital of Spain?"))
        assert status == "miss"
        assert text
        assert time.monotonic() - started < 3  # the deadline (0.3 s), not the hang
        assert (await semantic_results(gw)).get("unavailable") == 2.0
        embedder.set_fault(Fault())
        await ask(client, user("What is the capital of Italy?"))
    production_logging.flush()
    events = [
        json.loads(line).get("event")
        for line in capfd.readouterr().out.splitlines()
        if line[:1] == "{"
    ]
    # Logged once per outage, not once per request.
    assert events.count("semantic_embedding_unavailable") == 1
    assert events.count("semantic_embedding_available") == 1


async def test_only_the_question_may_be_compared_by_meaning() -> None:
    def asked(system: str, question: str) -> list[ChatCompletionMessageParam]:
        return [{"role": "system", "content": system}, *user(question)]

    async with semantic(embed="question") as gw, sdk(gw) as client:
        await ask(client, asked("Be brief.", "What is the capital of France?"))
        await stored(gw)
        assert (await ask(client, asked("Be brief.", "what is the capital of FRANCE")))[0] == "hit"
        assert (await ask(client, asked("Be kind.", "what is the capital of FRANCE")))[0] == "miss"


def test_the_embedding_model_must_be_configured() -> None:
    text = """
models:
  - name: m
    backends: [{url: "http://127.0.0.1:9"}]
    cache: {semantic: {embedding_model: nowhere}}
"""
    with pytest.raises(ConfigError, match="embedding_model 'nowhere' is not a configured model"):
        parse_config(text)
