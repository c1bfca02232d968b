"""What the semantic cache compares: the text of a chat request's question (its system prompt
and last user message), the rest of the request that must match exactly, and the guard that
keeps near-misses apart.

Embeddings place "Convert 5 miles to kilometres" at 0.994 of "Convert 5 kilometres to miles",
and "What is not the capital of France?" at 0.90 of the question without "not" (measured
with all-MiniLM-L6-v2, docs/caching.md). Similarity alone would answer them with each other's
answer; `same_question` refuses a match whose numbers, negations or word order differ.
"""

from __future__ import annotations

import re
from typing import Any

_SYSTEM_ROLES = frozenset({"system", "developer"})
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nor", "neither", "without", "cannot", "nothing", "nobody"}
)


def question_of(
    body: dict[str, Any], max_turns: int, *, with_system: bool = True
) -> tuple[str, dict[str, Any]] | None:
    """(the text to embed, the rest of the request: every other field and the earlier turns,
    and the system prompt unless `with_system`), or None when the request is not a question
    the semantic cache takes: not a chat, more user turns than `max_turns`, a last message
    that is not the user's, content not text."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    turns = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "user")
    if turns > max_turns:
        return None
    system, history = [], []
    for message in messages[:-1]:
        if not isinstance(message, dict):
            return None
        if with_system and message.get("role") in _SYSTEM_ROLES:
            text = _text(message.get("content"))
            if text is None:
                return None
            system.append(text)
        else:
            history.append(message)
    question = _text(last.get("content"))
    if question is None or not question.strip():
        return None
    embedded = "\n".join([*system, question])
    return embedded, {**body, "messages": history}


def same_question(asked: str, cached: str) -> bool:
    """Whether two similar texts may share an answer: the same numbers in the same order,
    the same negations, and not the same words in another order."""
    if _NUMBER.findall(asked) != _NUMBER.findall(cached):
        return False
    words_asked, words_cached = _words(asked), _words(cached)
    if _negations(words_asked) != _negations(words_cached):
        return False
    return not (sorted(words_asked) == sorted(words_cached) and words_asked != words_cached)


def _words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def _negations(words: list[str]) -> int:
    return sum(1 for word in words if word in _NEGATIONS or word.endswith("n't"))


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None  # an image, audio: not comparable by text
            text = part.get("text")
            if not isinstance(text, str):
                return None
            texts.append(text)
        return "".join(texts)
    return None
