"""The semantic cache's question (gateway.cache.question): what is embedded, what must match
exactly, and the guard that keeps near-misses apart (pairs that all-MiniLM-L6-v2 puts above
0.9 of each other, docs/caching.md)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cache.question import question_of, same_question


def chat(*messages: tuple[str, Any], **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in messages], **fields}


def test_the_system_prompt_and_the_last_question_are_embedded() -> None:
    body = chat(("system", "Be brief."), ("user", "What is the capital of France?"),
                temperature=0)  # fmt: skip
    found = question_of(body, max_turns=1)
    assert found is not None
    text, rest = found
    assert text == "Be brief.\nWhat is the capital of France?"
    assert rest == {"messages": [], "temperature": 0}


def test_earlier_turns_must_match_exactly_and_count_against_the_limit() -> None:
    body = chat(("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?"))
    assert question_of(body, max_turns=1) is None
    found = question_of(body, max_turns=2)
    assert found is not None
    assert found[1]["messages"] == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        chat(("assistant", "Hello")),
        chat(("user", [{"type": "image_url", "image_url": {"url": "data:,"}}])),
        chat(("user", "   ")),
        {"messages": "not a list"},
        {"prompt": "a completion"},
    ],
)
def test_what_is_not_a_text_question_is_not_taken(body: dict[str, Any]) -> None:
    assert question_of(body, max_turns=4) is None


def test_text_parts_are_joined() -> None:
    body = chat(("user", [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]))
    assert question_of(body, max_turns=1) == ("What is 2+2?", {"messages": []})


@pytest.mark.parametrize(
    ("asked", "cached"),
    [
        ("What's the capital city of France?", "What is the capital of France?"),
        ("Which city is the capital of France?", "What is the capital of France?"),
        ("Convert 5 kilometers into miles.", "Convert 5 kilometres to miles."),
    ],
)
def test_paraphrases_pass_the_guard(asked: str, cached: str) -> None:
    assert same_question(asked, cached)


@pytest.mark.parametrize(
    ("asked", "cached"),
    [
        ("Convert 6 kilometres to miles.", "Convert 5 kilometres to miles."),  # 0.917
        ("What was the capital of France in 1800?", "What is the capital of France?"),
        ("What is not the capital of France?", "What is the capital of France?"),  # 0.898
        ("Why isn't it working?", "Why is it working?"),
        ("Convert 5 miles to kilometres.", "Convert 5 kilometres to miles."),  # 0.994
    ],
)
def test_near_misses_do_not(asked: str, cached: str) -> None:
    assert not same_question(asked, cached)
