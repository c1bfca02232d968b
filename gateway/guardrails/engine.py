"""Rules at work: compiled once per configuration, run over a request's or an answer's texts.

A rule's matches are found by its detector; `block` refuses the request or stops the answer
(naming the rule, never the text), `redact` replaces each match with its placeholder
(`[EMAIL]`), `log` counts and logs the rule id. A request's texts are its messages' contents
(every role: all of it reaches the model), its prompt, or an embedding request's input; an
answer's are its choices' contents (gateway.guardrails.answers).

A `Guard` is what one model (and a key's own policies) applies: the input rules, the output
rules, the input limits. Each rule is compiled twice: for whole texts (Python's `re`, with
the detectors' shortcuts) and for streams (the `regex` module, whose partial matches tell
the sliding window what to hold back: gateway.guardrails.window).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import regex

from gateway.guardrails.detectors import BUILT_IN, Span, count_digits, digit_clusters
from gateway.guardrails.presidio import PresidioEngines
from gateway.guardrails.settings import InputLimits, Policy, Rule

_DETECTORS = {detector.name: detector for detector in BUILT_IN}


@dataclass(frozen=True, slots=True)
class StreamPattern:
    """One pattern of a rule as a stream scans it: partial matches at the end of the text
    seen so far are what may still become a match."""

    pattern: regex.Pattern[str]
    valid: Callable[[str], bool]
    max_length: int  # no match is longer: a partial one older than this never completes
    required: re.Pattern[str] | None = None  # without it in the text, only a trailing run
    lead: str = ""  # of `lead` may still become a match (gateway.guardrails.detectors)
    starts: tuple[str, ...] = ()  # and only if it begins one of these, when given


# A text's matches, given its digit count and digit clusters (gateway.guardrails.detectors),
# which are found once per text for all of a guard's rules.
Finder = Callable[[str, int, list[tuple[int, int]]], list[Span]]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    finder: Finder
    placeholder: str
    stream: tuple[StreamPattern, ...]  # none: a stream holds back `hold` characters instead
    hold: int = 0
    typed: bool = False  # each match's placeholder is its kind ("[PERSON]"): Presidio's

    def find(self, text: str) -> list[Span]:
        return self.finder(text, *text_shape(text))

    def label(self, span: Span) -> str:
        return f"[{span.kind}]" if self.typed else self.placeholder


def text_shape(text: str) -> tuple[int, list[tuple[int, int]]]:
    """What the digit-shaped detectors' shortcuts need of a text: its digit count and its
    digit clusters."""
    digits = count_digits(text)
    return digits, digit_clusters(text) if digits >= 4 else []


def _always(text: str) -> bool:
    return True


def compile_rule(rule: Rule, engines: PresidioEngines | None = None) -> CompiledRule:
    """`rule` ready to run; a Presidio rule's analyzer comes from `engines` (loaded there
    once, reused by later compilations)."""
    if rule.presidio is not None:
        detector = rule.presidio
        finder = (engines or PresidioEngines()).finder(
            detector.model, detector.language, detector.entities, detector.score_threshold
        )
        return CompiledRule(
            rule, finder, rule.placeholder or "[PII]", (), rule.max_length or 32,
            typed=rule.placeholder is None,
        )  # fmt: skip
    if rule.detector is not None:
        detectors = [d for d in BUILT_IN if d.name == rule.detector]

        def find(text: str, digits: int, clusters: list[tuple[int, int]]) -> list[Span]:
            return [
                span for detector in detectors for span in detector.find(text, digits, clusters)
            ]

        placeholder = _DETECTORS[rule.detector].placeholder
        stream = tuple(
            StreamPattern(
                regex.compile(d.pattern.pattern),
                d.valid,
                d.max_length,
                None if d.required is None else re.compile(d.required),
                d.lead,
                d.starts,
            )
            for d in detectors
        )
    else:
        if rule.regex is not None:
            source, longest = rule.regex, rule.max_length or 256
            pattern = re.compile(source)
        else:
            words = "|".join(re.escape(word) for word in rule.words)
            source, longest = rf"\b(?:{words})\b", max(len(word) for word in rule.words)
            pattern = re.compile(source, re.IGNORECASE)

        def find(text: str, digits: int, clusters: list[tuple[int, int]]) -> list[Span]:
            return [Span(m.start(), m.end(), rule.id) for m in pattern.finditer(text) if m.group()]

        placeholder = "[REDACTED]"
        flags = regex.IGNORECASE if rule.words else 0
        stream = (StreamPattern(regex.compile(source, flags | regex.V0), _always, longest),)
    return CompiledRule(rule, find, rule.placeholder or placeholder, stream)


@dataclass(frozen=True, slots=True)
class Guard:
    """The guardrails one model applies (with a key's own policies, where it has some)."""

    input: tuple[CompiledRule, ...]
    output: tuple[CompiledRule, ...]
    limits: InputLimits
    # A digest of the output rules: part of a cached answer's key, since what is stored is
    # the answer as these rules let it out (a reload that changes them misses the old ones).
    output_digest: str

    @property
    def any(self) -> bool:
        return bool(self.input or self.output or self.limits.any)


def guard_of(
    policies: tuple[Policy, ...], names: tuple[str, ...], engines: PresidioEngines | None = None
) -> Guard:
    """The rules and limits of the named policies, in their order; the limits combined to
    the strictest."""
    by_name = {policy.name: policy for policy in policies}
    rules = [compile_rule(rule, engines) for name in names for rule in by_name[name].rules]
    limits = InputLimits()
    for name in names:
        limits = limits.combined(by_name[name].limits)
    output = tuple(compiled for compiled in rules if compiled.rule.on_output)
    described = json.dumps([c.rule.model_dump(mode="json") for c in output], sort_keys=True)
    return Guard(
        input=tuple(compiled for compiled in rules if compiled.rule.on_input),
        output=output,
        limits=limits,
        output_digest=hashlib.sha256(described.encode()).hexdigest()[:16] if output else "",
    )


class Blocked(Exception):
    def __init__(self, rule_id: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id


class Findings:
    """What the rules found over one request's or answer's texts: each rule that fired,
    once, in the order it first did, and the block rule that fired, if one did."""

    __slots__ = ("blocked", "fired")

    def __init__(self) -> None:
        self.fired: dict[str, CompiledRule] = {}
        self.blocked: CompiledRule | None = None

    def hit(self, compiled: CompiledRule) -> None:
        self.fired.setdefault(compiled.rule.id, compiled)
        if compiled.rule.action == "block" and self.blocked is None:
            self.blocked = compiled

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.fired)


def scan(text: str, rules: tuple[CompiledRule, ...], findings: Findings) -> str:
    """`text` with every redaction made, the rules that matched noted in `findings`. A
    block rule's match ends the scan (the caller refuses or stops)."""
    shape = text_shape(text)
    for compiled in rules:
        spans = compiled.finder(text, *shape)
        if not spans:
            continue
        findings.hit(compiled)
        if compiled.rule.action == "block":
            return text
        if compiled.rule.action == "redact":
            text = redact(text, [(span.start, span.end, compiled.label(span)) for span in spans])
            shape = text_shape(text)
    return text


def mask(text: str, rules: tuple[CompiledRule, ...]) -> str:
    """`text` with every rule's matches replaced by its placeholder, whatever its action: for
    a log line, which must never hold what a rule matched."""
    shape = text_shape(text)
    spans = [
        (span.start, span.end, compiled.label(span))
        for compiled in rules
        for span in compiled.finder(text, *shape)
    ]
    return redact(text, spans) if spans else text


def redact(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with each (start, end, placeholder) replaced; of overlapping spans, the
    earliest wins."""
    out, last = [], 0
    for start, end, placeholder in sorted(spans):
        if start < last:
            continue  # overlapping: already covered
        out.append(text[last:start])
        out.append(placeholder)
        last = end
    out.append(text[last:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class InputVerdict:
    body: bytes | None  # the request rewritten (redactions), or None: unchanged
    fired: tuple[CompiledRule, ...]  # the rules that matched, each once


def check_input(body: dict[str, Any], rules: tuple[CompiledRule, ...]) -> InputVerdict:
    """Run `rules` over the request's texts: Blocked by the first block rule that matches;
    otherwise `body` with every redaction made (in place, and serialised), and the rules
    that fired."""
    findings = Findings()
    changed = False

    def visit(text: str) -> str:
        nonlocal changed
        scanned = scan(text, rules, findings)
        if findings.blocked is not None:
            raise Blocked(findings.blocked.rule.id)
        changed = changed or scanned is not text
        return scanned

    _each_text(body, visit)
    rewritten = json.dumps(body, ensure_ascii=False).encode() if changed else None
    return InputVerdict(rewritten, tuple(findings.fired.values()))


def _each_text(body: dict[str, Any], visit: Callable[[str], str]) -> None:
    """Every text the request sends the model, each replaced by what `visit` returns."""
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = visit(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = visit(part["text"])
    for field in ("prompt", "input"):  # completions, embeddings
        value = body.get(field)
        if isinstance(value, str):
            body[field] = visit(value)
        elif isinstance(value, list):
            body[field] = [visit(item) if isinstance(item, str) else item for item in value]
