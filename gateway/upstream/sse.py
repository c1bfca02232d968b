"""Server-sent events as the OpenAI streaming API uses them: framing an upstream byte stream
into events, recognising what matters in them, and writing the gateway's own events."""

from __future__ import annotations

import json
import re
from typing import Any

DONE = b"data: [DONE]\n\n"


class EventFramer:
    """Splits a byte stream into complete events (each ending with a blank line).

    Bytes of an unfinished event are held until the rest arrives; complete events are handed
    on at once, never held back to be coalesced with later ones.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events now available, as one bytes object (possibly empty)."""
        if not self._pending and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            return chunk  # the common case: whole events, nothing held back
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        return data[: end + 2]

    @property
    def pending(self) -> bytes:
        return self._pending


_DONE_ENDINGS = (b"data: [DONE]\n\n", b"data:[DONE]\n\n")


def is_done(events: bytes) -> bool:
    """Whether these events end with the [DONE] event. It is always the last one, so the end
    is where to look: generated text that says "data: [DONE]" cannot end a stream early."""
    return events.endswith(_DONE_ENDINGS)


def without_done(events: bytes) -> bytes:
    """`events` (which end with [DONE]) without that last event."""
    for ending in _DONE_ENDINGS:
        if events.endswith(ending):
            return events[: -len(ending)]
    return events


def find_error(events: bytes) -> dict[str, Any] | None:
    """The error object if an upstream put an error inside its 200 stream.

    vLLM and others send `data: {"error": {...}}` or `data: {"object": "error", ...}`. Only
    events that mention "error" as a key are parsed, so ordinary chunks cost a substring scan.
    """
    # `error"` with a bare quote is structural: inside a JSON string the quote is escaped.
    if b'error"' not in events:
        return None
    for line in events.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            continue
        try:
            data: dict[str, Any] = json.loads(payload)  # it starts with "{": an object
        except ValueError:
            continue
        error = data.get("error")
        if isinstance(error, dict):
            return error
        if isinstance(error, str):
            return {"message": error}
        if data.get("object") == "error":
            return data
    return None


def error_event(body: dict[str, Any]) -> bytes:
    """An OpenAI-style error event: the official SDKs raise APIError when they read one."""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def drop_usage_events(events: bytes) -> bytes:
    """`events` without the usage report (a chunk with no choices and a usage object), for
    a client that did not ask for it. Other events pass as they are."""
    if b'"usage"' not in events or _NO_CHOICES.search(events) is None:
        return events
    kept = [
        event
        for event in events.split(b"\n\n")
        if not (_NO_CHOICES.search(event) and b'"prompt_tokens"' in event)
    ]
    return b"\n\n".join(kept)
