"""What makes two requests the same answer (gateway.cache.fingerprint)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cache.fingerprint import fingerprint, is_deterministic, namespace_of

BASE: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 20,
}


def key(body: dict[str, Any], endpoint: str = "/v1/chat/completions", model: str = "m") -> str:
    return fingerprint(body, endpoint, model)


@pytest.mark.parametrize(
    "change",
    [
        {"user": "someone"},
        {"stream": True},
        {"stream_options": {"include_usage": True}},
        {"metadata": {"team": "a"}},
        {"store": True},
        {"model": "an-alias"},
        {"temperature": 0.0},
    ],
)
def test_fields_that_cannot_change_the_answer_do_not_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) == key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
        {"messages": [*BASE["messages"], {"role": "assistant", "content": "Paris"}]},
        {"max_tokens": 21},
        {"temperature": 0.1},
        {"seed": 1},
        {"stop": ["\n"]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"top_k": 5},  # a vLLM extra: unknown fields count
        {"n": 2},
        {"logprobs": True},
    ],
)
def test_fields_that_can_change_the_answer_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) != key(BASE)


def test_the_served_model_and_the_endpoint_are_part_of_the_key() -> None:
    assert key(BASE, model="other") != key(BASE)
    assert key(BASE, endpoint="/v1/completions") != key(BASE)


def test_key_order_does_not_matter() -> None:
    assert key(dict(reversed(list(BASE.items())))) == key(BASE)


def test_determinism_is_greedy_sampling_or_a_seed() -> None:
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 0.0})
    assert is_deterministic({"temperature": 0.9, "seed": 7})
    assert not is_deterministic({})  # OpenAI's default temperature is 1
    assert not is_deterministic({"temperature": 0.2})
    assert not is_deterministic({"temperature": False})
    assert not is_deterministic({"temperature": "0"})


def test_each_key_has_its_own_namespace_unless_shared() -> None:
    assert namespace_of("a", shared=False) != namespace_of("b", shared=False)
    assert namespace_of("a", shared=True) == namespace_of("b", shared=True)
    assert namespace_of(None, shared=False) not in (namespace_of("a", shared=False), "shared")
