"""Guardrail policies in the YAML: named sets of rules, referenced by models.

```yaml
guardrails:
  - name: pii
    rules:
      - {id: no-cards, detector: payment_card, direction: input, action: block}
      - {id: emails, detector: email, direction: input, action: redact}
      - {id: internal, regex: "PROJECT-[0-9]{4}", direction: both, action: log}
      - {id: no-keys, detector: api_key, direction: output, action: redact}
models:
  - name: mixtral-8x7b
    guardrails: [pii]
```
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.guardrails import presidio
from gateway.guardrails.detectors import BUILT_IN

DETECTORS = sorted({detector.name for detector in BUILT_IN})
_RULE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class PresidioDetector(BaseModel):
    """Presidio's analyzer as a rule's detector (gateway.guardrails.presidio)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entities: tuple[str, ...] = Field(min_length=1, description="e.g. PERSON, US_SSN")
    model: str = Field("en_core_web_lg", description="a spaCy model's name, or its path")
    language: str = "en"
    score_threshold: float = Field(0.5, ge=0, le=1)

    @field_validator("entities")
    @classmethod
    def _installed(cls, entities: tuple[str, ...]) -> tuple[str, ...]:
        if not presidio.installed():
            raise ValueError(presidio.INSTALL_HINT)
        return entities


class Rule(BaseModel):
    """One detector (built-in, an operator's regex, or a word list), where it applies and
    what happens on a match. Its id is what logs and metrics show: never the matched text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    detector: str | None = Field(None, description=f"a built-in: {', '.join(DETECTORS)}")
    regex: str | None = Field(None, description="an operator's pattern (Python syntax)")
    words: tuple[str, ...] = Field((), description="words matched whole, case ignored")
    presidio: PresidioDetector | None = Field(None, description="Presidio's, where installed")
    direction: Literal["input", "output", "both"] = "input"
    action: Literal["block", "redact", "log"] = "log"
    placeholder: str | None = Field(None, max_length=64, description="what redact writes")
    max_length: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="a regex's longest match (256 unless set), or what a Presidio rule holds "
        "back of a stream (32): how much of a stream the rule may hold back",
    )

    @property
    def on_input(self) -> bool:
        return self.direction != "output"

    @property
    def on_output(self) -> bool:
        return self.direction != "input"

    @field_validator("id")
    @classmethod
    def _valid_id(cls, rule_id: str) -> str:
        if not _RULE_ID.fullmatch(rule_id):
            raise ValueError("1-64 of letters, digits and ._:-")
        return rule_id

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, detector: str | None) -> str | None:
        if detector is not None and detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}: one of {', '.join(DETECTORS)}")
        return detector

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str | None) -> str | None:
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"not a valid regex: {exc}") from None
        return regex

    @model_validator(mode="after")
    def _one_detector(self) -> Rule:
        given = [
            self.detector is not None,
            self.regex is not None,
            bool(self.words),
            self.presidio is not None,
        ]
        if sum(given) != 1:
            raise ValueError("a rule has exactly one of detector, regex, words or presidio")
        return self


class InputLimits(BaseModel):
    """What a request may hold, as policy; None: no limit of that kind. Several policies'
    limits combine to the strictest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_prompt_tokens: int | None = Field(None, ge=1, description="the prompt's estimate")
    max_messages: int | None = Field(None, ge=1)
    roles: tuple[str, ...] | None = Field(None, description="the message roles allowed")
    tools: tuple[str, ...] | None = Field(None, description="the function names allowed")

    def combined(self, other: InputLimits) -> InputLimits:
        def least(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else min(a, b)

        def common(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> tuple[str, ...] | None:
            return b if a is None else a if b is None else tuple(x for x in a if x in b)

        return InputLimits(
            max_prompt_tokens=least(self.max_prompt_tokens, other.max_prompt_tokens),
            max_messages=least(self.max_messages, other.max_messages),
            roles=common(self.roles, other.roles),
            tools=common(self.tools, other.tools),
        )

    @property
    def any(self) -> bool:
        return any(value is not None for value in self.model_dump().values())


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    rules: tuple[Rule, ...] = ()
    limits: InputLimits = InputLimits()

    @model_validator(mode="after")
    def _unique_ids(self) -> Policy:
        ids = [rule.id for rule in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError(f"guardrails {self.name}: each rule id may appear once")
        if not self.rules and not self.limits.any:
            raise ValueError(f"guardrails {self.name}: a policy needs rules or limits")
        return self
