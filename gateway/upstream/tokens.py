"""Token usage: as the upstream reports it, read from the bytes without parsing the answer,
or as the gateway counts it from a stream when the upstream reports none (llama-cpp-python
never does).

`"prompt_tokens":` with bare quotes can only be a JSON key (quotes inside strings are
escaped), so a search of the raw bytes finds the usage object's numbers and nothing a model
generated. The same holds for `"content":`, `"text":` and `"finish_reason":`.
"""

from __future__ import annotations

import json
import re

from gateway.upstream.attempt import UpstreamCall

_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def usage_of(data: bytes) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) if `data` holds a usage object with numbers."""
    if b'"usage"' not in data:
        return None
    prompt = _PROMPT.search(data)
    if prompt is None:
        return None  # "usage": null, as in every chunk of some streams
    completion = _COMPLETION.search(data)
    return int(prompt.group(1)), int(completion.group(1)) if completion else 0


# A delta with generated text: `"content": "x"` (chat) or `"text": "x"` (completions), not
# the empty content of a role-only first chunk. Servers stream about one token an event.
_CONTENT = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_ID = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')
_CREATED = re.compile(rb'"created"\s*:\s*(\d{1,12})')


class StreamTally:
    """What the gateway counts of one relayed stream: events with generated text (the
    completion's tokens when the upstream reports none), whether a finish reason came, and
    the stream's id and time, for a usage event of its own."""

    __slots__ = ("_created", "_id", "call", "completion_tokens", "finished", "public_model")

    def __init__(self, call: UpstreamCall, public_model: str) -> None:
        self.call = call
        self.public_model = public_model
        self.completion_tokens = 0
        self.finished = False
        self._id: bytes | None = None
        self._created = b"0"

    def count(self, events: bytes) -> int:
        """Learn from these events; returns how many carried generated text."""
        found = len(_CONTENT.findall(events))
        self.completion_tokens += found
        if not self.finished and b'"finish_reason"' in events:
            self.finished = _FINISHED.search(events) is not None
        if self._id is None and (ident := _ID.search(events)) is not None:
            self._id = ident.group(1)
            created = _CREATED.search(events)
            self._created = created.group(1) if created else b"0"
        return found

    @property
    def answered(self) -> bool:
        """Whether the stream carried an answer: some text, or at least a finish reason."""
        return self.completion_tokens > 0 or self.finished

    def usage_event(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The final usage chunk, as OpenAI sends it with stream_options.include_usage."""
        chat = self.call.path.endswith("/chat/completions")
        chunk: dict[str, object] = {
            "id": (self._id or b"").decode(),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(self._created),
            "model": self.public_model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
