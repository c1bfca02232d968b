"""Output rules over answers: a JSON answer whole, a stream event by event.

An answer's texts are its choices' contents: a chat message's `content` (and the
`reasoning_content` or `reasoning` some servers add), a completion's `text`. `redact`
rewrites them; `block` withholds a JSON answer's choice (its content null, its finish
reason `content_filter`) and stops a stream: a last chunk with `finish_reason:
content_filter`, then an error event (the official SDKs raise an APIError on it), and
nothing more from the model. The usage the model spent is kept either way.

A stream keeps one sliding window per choice and text field (gateway.guardrails.window), so
only a possible match in progress is held back; a choice's finish, or [DONE], releases what
is left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.guardrails.engine import CompiledRule, Findings, scan
from gateway.guardrails.window import SlidingWindow

_TEXT_FIELDS = ("content", "reasoning_content", "reasoning")  # of a message, or a delta
CONTENT_FILTER = "content_filter"
_DONE = (b"data: [DONE]", b"data:[DONE]")


def _dumps(value: Any, *, python_json: bool = False) -> bytes:
    """Compact JSON, by orjson (every event of a guarded stream is re-encoded); by json for
    what orjson refuses (an integer over 64 bits), and for what only json read
    (`python_json`: its NaN and Infinity are written back as they came, not as null)."""
    if not python_json:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _loads(data: bytes) -> tuple[Any, bool]:
    """(the value, whether orjson read it); json reads what only it can (NaN, Infinity:
    Python servers write them in logprobs), and raises ValueError on what neither can."""
    try:
        return orjson.loads(data), True
    except orjson.JSONDecodeError:
        return json.loads(data), False


def stopped_error(rule_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"The answer was stopped by the gateway's content policy (rule {rule_id}).",
            "type": CONTENT_FILTER,
            "param": None,
            "code": CONTENT_FILTER,
        }
    }


@dataclass(frozen=True, slots=True)
class AnswerVerdict:
    body: bytes | None  # the answer rewritten, or None: unchanged
    findings: Findings


def check_answer(payload: bytes, rules: tuple[CompiledRule, ...]) -> AnswerVerdict:
    """Run `rules` over a JSON answer's choices."""
    findings = Findings()
    try:
        answer, plain = _loads(payload)
    except ValueError:
        return AnswerVerdict(None, findings)
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return AnswerVerdict(None, findings)
    changed = False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        holder = choice.get("message")
        holder, fields = (holder, _TEXT_FIELDS) if isinstance(holder, dict) else (choice, ("text",))
        blocked_before = findings.blocked
        for field in fields:
            text = holder.get(field)
            if not isinstance(text, str):
                continue
            scanned = scan(text, rules, findings)
            if findings.blocked is not blocked_before:
                _withhold(choice, holder)
                changed = True
                break
            if scanned is not text:
                holder[field] = scanned
                changed = True
    return AnswerVerdict(_dumps(answer, python_json=not plain) if changed else None, findings)


def _withhold(choice: dict[str, Any], holder: dict[str, Any]) -> None:
    if holder is choice:
        choice["text"] = ""
    else:
        holder["content"] = None
        for field in _TEXT_FIELDS[1:]:
            holder.pop(field, None)
    choice["finish_reason"] = CONTENT_FILTER


class StreamGuard:
    """Output rules over a stream's events, as they are relayed."""

    __slots__ = ("_before", "_last", "_rules", "_windows", "findings")

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self._rules = rules
        self._windows: dict[tuple[int, str], SlidingWindow] = {}
        self._last: dict[str, Any] = {}  # the last chunk seen: the shape of the gateway's own
        self._before: tuple[object, str, str] | None = None  # (choice, field, text) at a block
        self.findings = Findings()

    @property
    def blocked(self) -> CompiledRule | None:
        return self.findings.blocked

    @property
    def held(self) -> int:
        """Characters held back, over every choice and field."""
        return sum(window.held for window in self._windows.values())

    def feed(self, events: bytes) -> bytes:
        """Complete events in, the events to relay out. Once a block rule matched, the output
        ends with the content-filter chunk and the error event, and the stream must end."""
        out = []
        for event in events.split(b"\n\n"):
            if not event:
                continue
            out.append(self._event(event))
            if self.blocked is not None:
                break
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data = [line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return event + b"\n\n"  # a comment or a keep-alive
        if len(data) == 1 and (b"data:" + data[0] in _DONE or b"data: " + data[0] in _DONE):
            return self._release_all() + event + b"\n\n"
        try:
            chunk, plain = _loads(b"\n".join(data))
        except ValueError:
            # Unreadable, so unchecked: not relayed (a client's SDK could not read it either).
            return b""
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not choices:
            return event + b"\n\n"  # an error or a usage report: no text
        self._last = chunk
        for choice in choices:
            if isinstance(choice, dict):
                self._choice(choice)
                if self.blocked is not None:
                    return self._stopped(choice.get("index", 0))
        others = b"".join(line + b"\n" for line in lines if not line.startswith(b"data:"))
        return others + b"data: " + _dumps(chunk, python_json=not plain) + b"\n\n"

    def _choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        delta = choice.get("delta")
        holder, fields = (delta, _TEXT_FIELDS) if isinstance(delta, dict) else (choice, ("text",))
        finished = choice.get("finish_reason") is not None
        for field in fields:
            window = self._windows.get((index, field))
            piece = holder.get(field)
            if not isinstance(piece, str):
                if not (finished and window is not None and window.held):
                    continue
                piece = ""
            if window is None:
                window = self._windows[(index, field)] = SlidingWindow(self._rules)
            released = window.push(piece, self.findings)
            if finished and self.blocked is None:
                released += window.flush(self.findings)
                del self._windows[(index, field)]
            if self.blocked is not None:
                self._before = (index, field, released)  # the text before the match
                return
            holder[field] = released

    def _release_all(self) -> bytes:
        """At [DONE] (a stream whose choices sent no finish reason): what the windows still
        hold, as one last chunk."""
        if not self._windows:
            return b""
        choices = []
        for (index, field), window in self._windows.items():
            released = window.flush(self.findings)
            if self.blocked is not None:
                self._before = (index, field, released)
                return self._stopped(index)
            if released:
                choices.append(self._delta(index, {field: released}, None))
        self._windows.clear()
        return self._chunk(choices) if choices else b""

    def _stopped(self, index: object) -> bytes:
        """What ends a blocked stream: the text released before the match, a last chunk with
        the content-filter finish reason, and the error event."""
        assert self.blocked is not None
        before = b""
        if self._before is not None and self._before[2]:
            before = self._chunk([self._delta(index, {self._before[1]: self._before[2]}, None)])
        stop = before + self._chunk([self._delta(index, {}, CONTENT_FILTER)])
        return stop + b"data: " + _dumps(stopped_error(self.blocked.rule.id)) + b"\n\n"

    def _delta(self, index: object, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if self._last.get("object") == "text_completion":
            return {"index": index, "text": delta.get("text", ""), "finish_reason": finish}
        return {"index": index, "delta": delta, "finish_reason": finish}

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        last = self._last
        chunk: dict[str, Any] = {
            key: last[key]
            for key in ("id", "object", "created", "model", "system_fingerprint")
            if key in last
        }
        chunk["choices"] = choices
        return b"data: " + _dumps(chunk) + b"\n\n"
