"""What identifies a cached answer: the tenant, the endpoint, the served model and a hash of
a canonical form of every field of the request that can change the answer.

Fields are dropped by name only when they cannot change the answer (`user`, `stream`,
`stream_options`, …); every other field, vLLM's extras included, is part of the key, so an
unknown field makes two requests differ rather than collide.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that never change what the model answers: who asks (`user`), how the answer is
# delivered (`stream`, `stream_options`: a cached answer is rendered in either format), and
# OpenAI's bookkeeping (`store`, `metadata`, `service_tier`). `model` is replaced by the
# served model, so an alias and the model's own name share their answers.
IGNORED = frozenset(
    {"model", "user", "stream", "stream_options", "store", "metadata", "service_tier"}
)
SHARED = "shared"


def namespace_of(key_id: str | None, *, shared: bool) -> str:
    """The tenant an entry belongs to: its API key's id, everyone's (`shared`), or, with
    authentication off, the one anonymous tenant."""
    if shared:
        return SHARED
    return f"key:{key_id}" if key_id is not None else "anonymous"


def fingerprint(body: dict[str, Any], endpoint: str, model: str) -> str:
    """A SHA-256 of the request's answer-affecting fields, in a canonical JSON form (sorted
    keys, no whitespace, integral floats as integers: `temperature: 0` and `0.0` match)."""
    kept = {}
    for name, value in body.items():
        if name in IGNORED:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        kept[name] = value
    canonical = json.dumps(
        [endpoint, model, kept], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def is_deterministic(body: dict[str, Any]) -> bool:
    """Whether the client asked for a reproducible answer: greedy sampling, or a seed."""
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    return type(temperature) in (int, float) and temperature == 0
