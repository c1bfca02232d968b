"""A cached answer, independent of the wire format it arrived in.

An answer is kept as its choices (assembled: a message or a text, a finish reason) and its
usage, and, when it arrived as a stream, as that stream's events too. It is rendered back as
either format: a JSON answer from a stream's events and a stream from a JSON answer, each with
a fresh `id` and `created` and the public model name. A streamed answer replays its own
events, so a client sees the same chunks it would have seen from the model.

Only complete answers are ever built: every choice ended with a finish reason, and a stream
reached `[DONE]`. Anything else (a cut stream, an error object) is `None`, and is not stored.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["chat", "text"]  # /v1/chat/completions, /v1/completions
_OBJECTS = {
    "chat": ("chat.completion", "chat.completion.chunk", "chatcmpl-"),
    "text": ("text_completion", "text_completion", "cmpl-"),
}
_DONE = b"data: [DONE]\n\n"
FORMAT_VERSION = 1


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _fresh_id(kind: Kind) -> str:
    return f"{_OBJECTS[kind][2]}{random.getrandbits(96):024x}"


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    kind: Kind
    choices: tuple[dict[str, Any], ...]  # assembled, in index order
    usage: dict[str, Any] | None
    system_fingerprint: str | None = None
    chunks: tuple[dict[str, Any], ...] | None = None  # the stream's events, when it was one
    size: int = 0  # bytes of its stored form

    @property
    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens the answer cost when it was produced."""
        usage = self.usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return (
            prompt if type(prompt) is int else 0,
            completion if type(completion) is int else 0,
        )

    # Assembling.

    @staticmethod
    def from_json(kind: Kind, payload: bytes) -> CachedAnswer | None:
        """From a JSON answer; None unless it is one, complete."""
        data = _loads(payload)
        if not isinstance(data, dict):
            return None
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return None
        kept = []
        for choice in choices:
            if not isinstance(choice, dict) or not choice.get("finish_reason"):
                return None
            body = choice.get("message") if kind == "chat" else choice.get("text")
            if (kind == "chat" and not isinstance(body, dict)) or (
                kind == "text" and not isinstance(body, str)
            ):
                return None
            kept.append(choice)
        kept.sort(key=lambda choice: _index(choice))
        return _sized(CachedAnswer(kind, tuple(kept), _usage(data.get("usage")), _fp(data), None))

    @staticmethod
    def from_stream(kind: Kind, events: bytes) -> CachedAnswer | None:
        """From a stream's SSE events, `[DONE]` included; None unless complete."""
        chunks: list[dict[str, Any]] = []
        done = False
        for line in events.split(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            chunk = _loads(data)
            if not isinstance(chunk, dict) or "error" in chunk:
                return None
            chunks.append(chunk)
        if not done or not chunks:
            return None
        assembler = _Assembler(kind)
        usage: dict[str, Any] | None = None
        fingerprint = None
        for chunk in chunks:
            usage = _usage(chunk.get("usage")) or usage
            fingerprint = _fp(chunk) or fingerprint
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict):
                    assembler.add(choice)
        choices = assembler.choices()
        if choices is None:
            return None
        stored = tuple(_bare(chunk) for chunk in chunks)
        return _sized(CachedAnswer(kind, choices, usage, fingerprint, stored))

    # Rendering.

    def json_body(self, model: str) -> bytes:
        obj, _, _ = _OBJECTS[self.kind]
        answer: dict[str, Any] = {
            "id": _fresh_id(self.kind),
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "choices": list(self.choices),
        }
        if self.usage is not None:
            answer["usage"] = self.usage
        if self.system_fingerprint is not None:
            answer["system_fingerprint"] = self.system_fingerprint
        return _dumps(answer)

    def stream_body(self, model: str, *, include_usage: bool) -> bytes:
        """The SSE events of the answer, ending with `[DONE]`: its own events when it was a
        stream, else events made from its choices. The usage event only when asked for."""
        _, obj, _ = _OBJECTS[self.kind]
        head = {"id": _fresh_id(self.kind), "object": obj, "created": int(time.time())}
        head["model"] = model
        if self.system_fingerprint is not None:
            head["system_fingerprint"] = self.system_fingerprint
        out = []
        sent_usage = False
        for chunk in self.chunks if self.chunks is not None else self._made_chunks():
            event = {**chunk, **head}
            if "usage" in event:
                if not include_usage or sent_usage:
                    del event["usage"]
                    if not event.get("choices"):
                        continue  # a usage-only event
                else:
                    sent_usage = True
            out.append(b"data: " + _dumps(event) + b"\n\n")
        if include_usage and not sent_usage and self.usage is not None:
            out.append(b"data: " + _dumps({**head, "choices": [], "usage": self.usage}) + b"\n\n")
        out.append(_DONE)
        return b"".join(out)

    def _made_chunks(self) -> list[dict[str, Any]]:
        """A JSON answer as a stream: per choice, one event with the whole content, then one
        with its finish reason."""
        chunks: list[dict[str, Any]] = []
        for choice in self.choices:
            index = _index(choice)
            if self.kind == "chat":
                delta = {
                    key: value
                    for key, value in (choice.get("message") or {}).items()
                    if value is not None
                }
                delta.setdefault("role", "assistant")
                tool_calls = delta.get("tool_calls")
                if isinstance(tool_calls, list):
                    delta["tool_calls"] = [
                        {**call, "index": n}
                        for n, call in enumerate(tool_calls)
                        if isinstance(call, dict)
                    ]
                first: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
                last: dict[str, Any] = {"index": index, "delta": {}}
            else:
                first = {"index": index, "text": choice.get("text", ""), "finish_reason": None}
                last = {"index": index, "text": ""}
            if choice.get("logprobs") is not None:
                first["logprobs"] = choice["logprobs"]
            last["finish_reason"] = choice.get("finish_reason")
            chunks.extend(({"choices": [first]}, {"choices": [last]}))
        return chunks

    # Storing.

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "v": FORMAT_VERSION,
                "kind": self.kind,
                "choices": self.choices,
                "usage": self.usage,
                "system_fingerprint": self.system_fingerprint,
                "chunks": self.chunks,
            }
        )

    @staticmethod
    def from_bytes(data: bytes) -> CachedAnswer | None:
        """A stored answer, or None for anything else (another version's format, or bytes
        somebody else wrote under the key): never trusted further than its shape."""
        stored = _loads(data)
        if not isinstance(stored, dict) or stored.get("v") != FORMAT_VERSION:
            return None
        kind, choices, chunks = stored.get("kind"), stored.get("choices"), stored.get("chunks")
        usage, fingerprint = stored.get("usage"), stored.get("system_fingerprint")
        if kind not in _OBJECTS or not isinstance(choices, list) or not choices:
            return None
        if not all(isinstance(choice, dict) for choice in choices):
            return None
        if chunks is not None and not (
            isinstance(chunks, list) and all(isinstance(chunk, dict) for chunk in chunks)
        ):
            return None
        return CachedAnswer(
            kind,
            tuple(choices),
            _usage(usage),
            fingerprint if isinstance(fingerprint, str) else None,
            None if chunks is None else tuple(chunks),
            len(data),
        )


class _Assembler:
    """A stream's deltas, folded into one choice per index."""

    def __init__(self, kind: Kind) -> None:
        self._kind = kind
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, choice: dict[str, Any]) -> None:
        index = _index(choice)
        kept = self._choices.setdefault(index, self._empty(index))
        if choice.get("finish_reason"):
            kept["finish_reason"] = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            _extend_logprobs(kept, logprobs)
        if self._kind == "text":
            text = choice.get("text")
            if isinstance(text, str):
                kept["text"] += text
            return
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        message = kept["message"]
        for field in ("role", "name"):
            if isinstance(delta.get(field), str):
                message[field] = delta[field]
        for field in ("content", "refusal", "reasoning_content"):
            piece = delta.get(field)
            if isinstance(piece, str):
                message[field] = (message.get(field) or "") + piece
        function_call = delta.get("function_call")
        if isinstance(function_call, dict):
            _extend_call(message.setdefault("function_call", {}), function_call)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                calls = message.setdefault("tool_calls", {})
                at = call.get("index")
                if type(at) is not int:
                    at = len(calls)
                kept_call = calls.setdefault(at, {"function": {}})
                for field in ("id", "type"):
                    if isinstance(call.get(field), str):
                        kept_call[field] = call[field]
                if isinstance(call.get("function"), dict):
                    _extend_call(kept_call["function"], call["function"])

    def _empty(self, index: int) -> dict[str, Any]:
        if self._kind == "text":
            return {"index": index, "text": "", "finish_reason": None}
        message = {"role": "assistant", "content": None}
        return {"index": index, "message": message, "finish_reason": None}

    def choices(self) -> tuple[dict[str, Any], ...] | None:
        """The assembled choices, or None if any did not finish."""
        if not self._choices:
            return None
        out = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            if not choice["finish_reason"]:
                return None
            message = choice.get("message")
            if message is not None and "tool_calls" in message:
                calls = message["tool_calls"]
                message["tool_calls"] = [{"type": "function", **calls[at]} for at in sorted(calls)]
            out.append(choice)
        return tuple(out)


def _extend_call(kept: dict[str, Any], piece: dict[str, Any]) -> None:
    if isinstance(piece.get("name"), str):
        kept["name"] = kept.get("name", "") + piece["name"]
    if isinstance(piece.get("arguments"), str):
        kept["arguments"] = kept.get("arguments", "") + piece["arguments"]


def _extend_logprobs(kept: dict[str, Any], piece: dict[str, Any]) -> None:
    """Chat logprobs (`content`, `refusal`: lists of tokens) and legacy completions logprobs
    (parallel lists): every list is extended."""
    into = kept.setdefault("logprobs", {})
    for field, value in piece.items():
        if isinstance(value, list):
            into.setdefault(field, []).extend(value)


def _bare(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chunk without what each replay replaces."""
    return {
        key: value
        for key, value in chunk.items()
        if key not in ("id", "created", "model", "system_fingerprint")
    }


def _index(choice: dict[str, Any]) -> int:
    index = choice.get("index", 0)
    return index if type(index) is int else 0


def _usage(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and value else None


def _fp(data: dict[str, Any]) -> str | None:
    fingerprint = data.get("system_fingerprint")
    return fingerprint if isinstance(fingerprint, str) else None


def _sized(answer: CachedAnswer) -> CachedAnswer:
    return CachedAnswer(
        answer.kind,
        answer.choices,
        answer.usage,
        answer.system_fingerprint,
        answer.chunks,
        len(answer.to_bytes()),
    )


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
