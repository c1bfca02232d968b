"""Rules at work: compiled once per configuration, run over a request's texts.

A rule's matches are found by its detector; `block` refuses the request (naming the rule,
never the text), `redact` replaces each match with its placeholder (`[EMAIL]`), `log` counts
and logs the rule id. A request's texts are its messages' contents (every role: all of it
reaches the model), its prompt, or an embedding request's input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.guardrails.detectors import BUILT_IN, Span
from gateway.guardrails.settings import InputLimits, Policy, Rule

_DETECTORS = {detector.name: detector for detector in BUILT_IN}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    find: Callable[[str], list[Span]]
    placeholder: str


def compile_rule(rule: Rule) -> CompiledRule:
    if rule.detector is not None:
        detectors = [d for d in BUILT_IN if d.name == rule.detector]

        def find(text: str) -> list[Span]:
            return [span for detector in detectors for span in detector.find(text)]

        placeholder = _DETECTORS[rule.detector].placeholder
    else:
        if rule.regex is not None:
            pattern = re.compile(rule.regex)
        else:
            words = "|".join(re.escape(word) for word in rule.words)
            pattern = re.compile(rf"\b(?:{words})\b", re.IGNORECASE)

        def find(text: str) -> list[Span]:
            return [Span(m.start(), m.end(), rule.id) for m in pattern.finditer(text) if m.group()]

        placeholder = "[REDACTED]"
    return CompiledRule(rule, find, rule.placeholder or placeholder)


def input_rules(policies: tuple[Policy, ...], names: tuple[str, ...]) -> tuple[CompiledRule, ...]:
    """The input rules of the named policies, in their order."""
    by_name = {policy.name: policy for policy in policies}
    return tuple(
        compile_rule(rule)
        for name in names
        for rule in by_name[name].rules
        if rule.direction == "input"
    )


def input_limits(policies: tuple[Policy, ...], names: tuple[str, ...]) -> InputLimits:
    """The strictest combination of the named policies' input limits."""
    by_name = {policy.name: policy for policy in policies}
    limits = InputLimits()
    for name in names:
        limits = limits.combined(by_name[name].limits)
    return limits


@dataclass(frozen=True, slots=True)
class OverLimit:
    kind: str  # max_prompt_tokens, max_messages, roles, tools
    param: str
    message: str


def over_limit(body: dict[str, Any], prompt_tokens: int, limits: InputLimits) -> OverLimit | None:
    """The first input limit the request breaks, if any."""
    if limits.max_prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
        param = "messages" if "messages" in body else "prompt"
        return OverLimit(
            "max_prompt_tokens", param,
            f"The prompt (about {prompt_tokens} tokens) is over this model's limit of "
            f"{limits.max_prompt_tokens} tokens per request.",
        )  # fmt: skip
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    if limits.max_messages is not None and len(messages) > limits.max_messages:
        return OverLimit(
            "max_messages", "messages",
            f"The request has {len(messages)} messages; this model takes at most "
            f"{limits.max_messages}.",
        )  # fmt: skip
    if limits.roles is not None:
        for message in messages:
            role = message.get("role") if isinstance(message, dict) else None
            if role not in limits.roles:
                return OverLimit(
                    "roles", "messages",
                    f"Messages with the role {_shown(role)} are not allowed for this model.",
                )  # fmt: skip
    if limits.tools is not None:
        for tool in body.get("tools") or ():
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if name not in limits.tools:
                return OverLimit(
                    "tools", "tools",
                    f"The tool {_shown(name)} is not allowed for this model.",
                )  # fmt: skip
    return None


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _shown(name: Any) -> str:
    """A client's role or tool name, quoted in an error only when it is a plain name (the
    shape OpenAI allows function names): anything else could be a secret sent by mistake."""
    return repr(name) if isinstance(name, str) and _PLAIN_NAME.fullmatch(name) else "given"


class Blocked(Exception):
    def __init__(self, rule_id: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id


@dataclass(frozen=True, slots=True)
class InputVerdict:
    body: bytes | None  # the request rewritten (redactions), or None: unchanged
    fired: tuple[CompiledRule, ...]  # the rules that matched, each once


def check_input(body: dict[str, Any], rules: tuple[CompiledRule, ...]) -> InputVerdict:
    """Run `rules` over the request's texts: Blocked by the first block rule that matches;
    otherwise `body` with every redaction made (in place, and serialised), and the rules
    that fired."""
    fired: dict[str, CompiledRule] = {}
    changed = False

    def visit(text: str) -> str:
        nonlocal changed
        for compiled in rules:
            spans = compiled.find(text)
            if not spans:
                continue
            fired.setdefault(compiled.rule.id, compiled)
            if compiled.rule.action == "block":
                raise Blocked(compiled.rule.id)
            if compiled.rule.action == "redact":
                text = _redact(text, spans, compiled.placeholder)
                changed = True
        return text

    _each_text(body, visit)
    rewritten = json.dumps(body, ensure_ascii=False).encode() if changed else None
    return InputVerdict(rewritten, tuple(fired.values()))


def _redact(text: str, spans: list[Span], placeholder: str) -> str:
    out, last = [], 0
    for span in sorted(spans, key=lambda span: span.start):
        if span.start < last:
            continue  # overlapping: already covered
        out.append(text[last : span.start])
        out.append(placeholder)
        last = span.end
    out.append(text[last:])
    return "".join(out)


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
