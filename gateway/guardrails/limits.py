"""Input limits as policy: what a request may hold (prompt tokens, messages, roles, tools),
checked before any rule runs. Several policies' limits combine to the strictest
(gateway.guardrails.settings.InputLimits)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.guardrails.settings import InputLimits


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
