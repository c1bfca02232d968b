"""Opt-in logging of prompts and completions (`logging.log_prompts`), truncated.

Off by default: prompts and completions are never logged unless an operator asks. When on,
the completion is rebuilt from what was relayed (an answer, or a stream's events), only for
the log, and everything goes through the same secrets filter as every other event.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from gateway.guardrails.engine import CompiledRule, mask

log = structlog.get_logger("gateway.upstream.transcript")

# At most this much of a stream is kept to rebuild the completion from.
STREAM_KEEP = 256 * 1024


class Transcript:
    """A request's prompt and what was relayed for it, kept only when prompt logging is on."""

    __slots__ = ("_chunks", "_size", "prompt", "rules")

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        # The guardrail rules of the request: whatever they match is masked in the log line,
        # whatever their action (a `log` rule's match reaches the model, never the log).
        self.rules: tuple[CompiledRule, ...] = ()
        self._chunks: list[bytes] = []
        self._size = 0

    def keep(self, data: bytes) -> None:
        if self._size < STREAM_KEEP:
            self._chunks.append(data)
            self._size += len(data)

    def completion(self) -> str:
        data = b"".join(self._chunks)
        if data.startswith(b"{"):
            return _text_of(_loads(data))
        pieces = []
        for line in data.split(b"\n"):
            if line.startswith(b"data:") and b"[DONE]" not in line:
                pieces.append(_text_of(_loads(line[5:].strip()), delta=True))
        return "".join(pieces)

    def log(self, request_id: str, model: str | None, limit: int) -> None:
        """One log event with the prompt and the completion, each cut at `limit` characters."""
        prompt, completion = self.prompt, self.completion()
        if self.rules:
            prompt, completion = mask(prompt, self.rules), mask(completion, self.rules)
        log.info(
            "transcript",
            request_id=request_id,
            model=model,
            prompt=prompt[:limit],
            completion=completion[:limit],
            truncated=len(prompt) > limit or len(completion) > limit,
        )


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _text_of(payload: Any, *, delta: bool = False) -> str:
    if not isinstance(payload, dict):
        return ""
    texts = []
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        part = choice.get("delta" if delta else "message") or {}
        content = part.get("content") if isinstance(part, dict) else None
        text = content if isinstance(content, str) else choice.get("text")
        if isinstance(text, str):
            texts.append(text)
    return "".join(texts)
