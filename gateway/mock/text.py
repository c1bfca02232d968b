"""Deterministic text, token counts and embeddings, so tests can predict what they get."""

from __future__ import annotations

import hashlib
import math
import re
import struct
from typing import Any

_WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "citadel",
    "routes",
    "every",
    "token",
    "through",
    "its",
    "gateway",
    "and",
    "the",
    "replicas",
    "answer",
    "in",
    "turn",
    "with",
    "calm",
    "precision",
)


def tokens(seed: str, count: int) -> list[str]:
    """`count` tokens (" word"), the same for the same seed."""
    digest = hashlib.sha256(seed.encode()).digest()
    start = int.from_bytes(digest[:4], "big")
    return [" " + _WORDS[(start + i * 7) % len(_WORDS)] for i in range(count)]


def count_tokens(value: Any) -> int:
    """A rough token count (4 characters a token) of a prompt, messages or input."""
    if isinstance(value, str):
        return max(1, math.ceil(len(value) / 4))
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(count_tokens(v) for v in value) or 1
    if isinstance(value, dict):
        content = value.get("content")
        return 4 + (count_tokens(content) if content else 0)
    return 1


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector of the text's words (feature hashing, case and punctuation ignored): texts
    with the same words embed alike and texts sharing most of them are close, as a real
    embedding model's paraphrases are (the semantic cache's fast tests rely on it)."""
    values = [0.0] * dimensions
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:4], "big") % dimensions
        values[index] += 1.0 if digest[4] & 1 else -1.0
    if not any(values):
        values[0] = 1.0
    norm = math.sqrt(sum(v * v for v in values))
    return [round(v / norm, 6) for v in values]


def pack_float32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
