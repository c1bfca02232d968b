"""Deterministic text, token counts and embeddings, so tests can predict what they get."""

from __future__ import annotations

import hashlib
import math
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
    """A unit vector derived from the text's hash."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in block)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def pack_float32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
