"""Choosing the model for a request: virtual models with declarative rules, context-window
fallback, and fallback chains. Pure functions over settings and request traits; the
RouterActor applies them with the replicas' live state.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.kernel.frozen import quick_init

# Only this much of a prompt is searched by content rules: bounded work per request.
CONTENT_SCAN_LIMIT = 64 * 1024


@quick_init
@dataclass(frozen=True, slots=True)
class RequestTraits:
    """What routing may look at in a request, extracted once by the HTTP edge."""

    prompt_tokens: int = 0  # an estimate (characters / 4, plus per-message overhead)
    max_tokens: int | None = None
    has_tools: bool = False
    json_mode: bool = False
    text: str = ""  # the prompt's text, for content rules (truncated)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    metadata: Mapping[str, Any] = field(default_factory=dict)
    allow_fallback: bool = True  # the client may opt out of fallbacks (a header)
    # The models the key may be served by (configured names and virtual models); None: any.
    # Fallbacks of either kind only ever go to one of these.
    allowed: frozenset[str] | None = None
    prefix_key: int | None = None  # hash of the leading messages, for prefix affinity

    def permits(self, model: str) -> bool:
        return self.allowed is None or model in self.allowed

    @property
    def needed_tokens(self) -> int:
        return self.prompt_tokens + (self.max_tokens or 0)


class RuleCondition(BaseModel):
    """Every condition given must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    has_tools: bool | None = None
    json_mode: bool | None = None
    min_prompt_tokens: int | None = Field(None, ge=0)
    max_prompt_tokens: int | None = Field(None, ge=0)
    content_matches: str | None = Field(None, description="a regular expression (any case)")
    header: dict[str, str] | None = Field(None, description="request headers that must equal")
    metadata: dict[str, str] | None = Field(None, description='the request\'s "metadata" keys')

    @field_validator("content_matches")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.content_matches, re.IGNORECASE) if self.content_matches else None

    def matches(self, traits: RequestTraits) -> bool:
        if self.has_tools is not None and traits.has_tools != self.has_tools:
            return False
        if self.json_mode is not None and traits.json_mode != self.json_mode:
            return False
        if self.min_prompt_tokens is not None and traits.prompt_tokens < self.min_prompt_tokens:
            return False
        if self.max_prompt_tokens is not None and traits.prompt_tokens > self.max_prompt_tokens:
            return False
        if self._pattern is not None and not self._pattern.search(traits.text):
            return False
        if self.header is not None:
            for name, value in self.header.items():
                if traits.headers.get(name.lower()) != value:
                    return False
        if self.metadata is not None:
            for key, value in self.metadata.items():
                # A missing key never matches (str(None) would equal a condition of "None").
                if key not in traits.metadata or str(traits.metadata[key]) != value:
                    return False
        return True


class RoutingRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="shown in the routing reason and the logs")
    when: RuleCondition
    prefer: tuple[str, ...] = Field(min_length=1, description="models to try, in order")


class VirtualModelSettings(BaseModel):
    """A model id that the gateway resolves per request (e.g. "auto")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    owned_by: str = "citadel"
    candidates: tuple[str, ...] = Field(
        min_length=1, description="cheapest capable first: the order models are considered in"
    )
    rules: tuple[RoutingRule, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelChoice:
    model: str
    reason: str


def preference(virtual: VirtualModelSettings, traits: RequestTraits) -> tuple[tuple[str, ...], str]:
    """The ordered models to consider for a request to a virtual model, and why."""
    for rule in virtual.rules:
        if rule.when.matches(traits):
            return rule.prefer, f"rule {rule.name}"
    return virtual.candidates, "default order"


def estimate_prompt_tokens(messages: list[Any] | None, prompt: Any = None) -> tuple[int, str]:
    """A cheap estimate of a prompt's tokens (4 characters a token, 4 tokens of overhead a
    message) and its text for content rules. Exact counts need the model's tokenizer; this
    only has to tell 3,000 tokens from 30,000."""
    pieces: list[str] = []
    overhead = 0
    if messages is not None:
        for message in messages:
            overhead += 4
            content = message.content
            if isinstance(content, str):
                pieces.append(content)
            elif isinstance(content, list):
                for part in content:
                    text = (part.model_extra or {}).get("text")
                    if isinstance(text, str):
                        pieces.append(text)
    elif isinstance(prompt, str):
        pieces.append(prompt)
    elif isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, str):
                pieces.append(item)
            elif isinstance(item, int):
                overhead += 1
            elif isinstance(item, list):
                overhead += len(item)
    text = "\n".join(pieces)
    return overhead + (len(text) + 3) // 4, text[:CONTENT_SCAN_LIMIT]


AFFINITY_MESSAGES = 2  # the system prompt and the first turn identify a conversation


def prefix_key(messages: list[Any]) -> int:
    """A stable 64-bit hash of a conversation's leading messages (role and content), the part
    a model server's prefix cache can reuse across the conversation's requests."""
    digest = hashlib.blake2b(digest_size=8)
    for message in messages[:AFFINITY_MESSAGES]:
        digest.update(message.role.encode())
        digest.update(b"\x00")
        content = message.content
        if isinstance(content, str):
            digest.update(content.encode())
        elif content is not None:
            digest.update(repr(content).encode())
        digest.update(b"\x01")
    return int.from_bytes(digest.digest(), "big")
