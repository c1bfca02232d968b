"""What real model servers do that the gateway must survive, reproduced by the mock service
(each seen on the real server in tests/real, see docs/backends.md):

- llama-cpp-python (`flavor: llama-cpp-python`): an X-Request-ID that is not a UUID gets a
  bare 400 with an empty body; a wrong type in a field its pydantic model knows (`top_k`,
  `stop`, `seed`, `logit_bias`, a `json_schema` format without a schema) gets a 500 with a
  traceback in the message, as do embeddings from a model loaded without them; a streamed
  prompt over the context window gets a 200 with an empty body (a unary one a proper 400);
  no /health; `n` is ignored; streams never report usage; with `interrupt_requests` a
  request that arrives while a stream runs ends that stream with [DONE] and no finish
  reason.
- llama-server (`flavor: llama-server`): a prompt over the window gets a 400 of type
  `exceed_context_size_error`; `n > 1` is refused.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from aiohttp import web

Flavor = Literal["vllm", "llama-cpp-python", "llama-server"]

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_TRACEBACK_TAIL = (
    '\n\n  File "/opt/llama/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, '
    "in create_chat_completion\n    POST /v1/chat/completions"
)


def refuses_request_id(flavor: Flavor, request: web.Request) -> bool:
    """llama-cpp-python validates X-Request-ID as a UUID (starlette-context's plugin)."""
    sent = request.headers.get("X-Request-ID")
    return flavor == "llama-cpp-python" and sent is not None and not _UUID.match(sent)


def internal_error(message: str) -> web.Response:
    """llama-cpp-python's 500: its error handler puts the exception and a traceback in."""
    body = {
        "error": {
            "message": message + _TRACEBACK_TAIL,
            "type": "internal_server_error",
            "param": None,
            "code": None,
        }
    }
    return web.json_response(body, status=500)


def wrong_type(body: dict[str, Any]) -> str | None:
    """The pydantic complaint llama-cpp-python would raise (as a 500) for this body."""
    checks: list[tuple[str, bool]] = [
        ("top_k", _is(body, "top_k", int)),
        ("seed", _is(body, "seed", int)),
        ("stop", _is(body, "stop", str) or _str_list(body.get("stop"))),
        ("temperature", _is(body, "temperature", int | float)),
        ("logit_bias", _bias(body.get("logit_bias"))),
        ("response_format", _response_format(body.get("response_format"))),
    ]
    for field, valid in checks:
        if field in body and body[field] is not None and not valid:
            return (
                f"1 validation error:\n  {{'type': 'type_error', 'loc': ('body', '{field}'), "
                f"'msg': 'Input should be valid', 'input': {body[field]!r}}}"
            )
    return None


def over_window(flavor: Flavor, stream: bool, prompt_tokens: int, window: int) -> web.Response:
    """How each flavour answers a prompt that does not fit its context."""
    if flavor == "llama-cpp-python" and stream:
        return web.Response(status=200, content_type="text/event-stream")  # and nothing else
    if flavor == "llama-server":
        error = {
            "code": 400,
            "message": f"request ({prompt_tokens} tokens) exceeds the available context size "
            f"({window} tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": prompt_tokens,
            "n_ctx": window,
        }
        return web.json_response({"error": error}, status=400)
    error = {
        "message": f"This model's maximum context length is {window} tokens. However, you "
        f"requested {prompt_tokens} tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    return web.json_response({"error": error}, status=400)


def _is(body: dict[str, Any], field: str, kind: Any) -> bool:
    value = body.get(field)
    return isinstance(value, kind) and not isinstance(value, bool)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _bias(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, int | float) and str(k).lstrip("-").isdigit() for k, v in value.items()
    )


def _response_format(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if value.get("type") == "json_schema":
        schema = value.get("json_schema")
        return isinstance(schema, dict) and isinstance(schema.get("schema"), dict)
    return value.get("type") in ("text", "json_object")
