"""Translating what a model service answered into the gateway's own errors.

Model servers fail unevenly: some answer malformed input with 500, some put Python tracebacks
in error bodies, some answer a 200 whose body is an error. The client gets an OpenAI error
with the right status and, at most, an upstream's short human-readable message; details go
to the logs only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from actors.backend.actor import Outcome
from gateway.http.errors import (
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
)

_MAX_RELAYED_MESSAGE = 400
# Signs that a message carries internals rather than a sentence meant for the caller.
_INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|Exception:|Error\(|0x[0-9a-f]{6,}|/(usr|home|opt)/"
)


def upstream_message(error: dict[str, Any] | None) -> str | None:
    """The upstream's error message if it is safe to show a client, else None."""
    if not error:
        return None
    message = error.get("message") or error.get("detail")
    if not isinstance(message, str):
        return None
    message = message.strip()
    if not message or len(message) > _MAX_RELAYED_MESSAGE or message.count("\n") > 1:
        return None
    if _INTERNALS.search(message):
        return None
    return message


def error_object(payload: bytes) -> dict[str, Any] | None:
    """The error object of an error body ({"error": {...}}, {"object": "error", ...},
    {"detail": ...}), or None if the body is not one."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if data.get("object") == "error" or "detail" in data:
        return data
    return None


# Matched whole (fullmatch): `^...$` would let a trailing newline through.
_SAFE_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SAFE_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]{0,63}")
# How servers say a prompt does not fit: vLLM ("maximum context length"), llama-server
# (type exceed_context_size_error, "exceeds the available context size"), TGI ("must have
# less than N tokens"), llama-cpp-python ("Requested tokens (N) exceed context window").
_CONTEXT_TYPES = frozenset({"exceed_context_size_error", "context_length_exceeded"})
_CONTEXT_MESSAGE = re.compile(
    r"maximum context length|context (?:size|window|length)|must have less than \d+ tokens",
    re.IGNORECASE,
)
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def _rejection(error: dict[str, Any] | None, message: str | None) -> InvalidRequest:
    """The client's error for a request an upstream refused as invalid: its OpenAI `code`
    and `param` kept when they are plain identifiers, a context overflow named as OpenAI
    names it."""
    error = error or {}
    code, param = error.get("code"), error.get("param")
    kind = error.get("type")
    if (
        kind in _CONTEXT_TYPES
        or code == CONTEXT_LENGTH_EXCEEDED
        or (message is not None and _CONTEXT_MESSAGE.search(message))
    ):
        return InvalidRequest(
            message or "The prompt does not fit the model's context window.",
            param=param if isinstance(param, str) and _SAFE_PARAM.fullmatch(param) else "messages",
            code=CONTEXT_LENGTH_EXCEEDED,
        )
    safe_code = isinstance(code, str) and _SAFE_CODE.fullmatch(code)
    return InvalidRequest(
        message or "The model service rejected the request.",
        param=param if isinstance(param, str) and _SAFE_PARAM.fullmatch(param) else None,
        code=code if safe_code else "upstream_rejected",
    )


def from_status(
    status: int, payload: bytes, rename: tuple[str, str]
) -> tuple[GatewayError, Outcome]:
    """The client-facing error for an upstream's non-200 answer, and what it says about the
    replica. `rename` is (upstream model name, public id) so an echoed name is rewritten.

    400, 413, 422 and 501 (not implemented) are the request's fault (REJECTED); a 500 or
    another 4xx may be either's (SUSPECT: llama-cpp-python answers a wrong type with 500),
    so a second replica decides; 429, 408 and 502-504 are the replica's."""
    error = error_object(payload)
    message = upstream_message(error)
    if message is not None:
        message = message.replace(*rename)
    if status in (400, 422):
        return _rejection(error, message), Outcome.REJECTED
    if status == 413:
        return (
            InvalidRequest("The request is too large for the model service."),
            Outcome.REJECTED,
        )
    if status == 501:  # llama-server asked for embeddings it was not started for
        return (
            InvalidRequest(
                "The model does not support this endpoint.", code="unsupported_endpoint"
            ),
            Outcome.REJECTED,
        )
    if status == 429:
        return (
            ServiceUnavailable(
                "The model service is overloaded. Retry shortly.",
                code="upstream_overloaded",
                headers={"Retry-After": "1"},
            ),
            Outcome.UPSTREAM_ERROR,
        )
    if status in (408, 504):
        return UpstreamTimeout("The model service timed out."), Outcome.TIMEOUT
    failed = UpstreamFailed(
        f"The model service failed (HTTP {status}) while processing the request."
    )
    # Another 4xx (401, 404: a replica configured with the wrong key or model name, or a
    # request it cannot serve) may be either's too: a second replica decides.
    suspect = status == 500 or 400 <= status < 500
    return failed, Outcome.SUSPECT if suspect else Outcome.UPSTREAM_ERROR


def signature(status: int, payload: bytes) -> tuple[int, bytes]:
    """What identifies a failure, to tell whether a second replica failed the same way."""
    return status, payload[:512]


def blame_of(error: GatewayError, payload: bytes) -> tuple[Outcome, tuple[int, bytes]]:
    """What an error object in a 200 answer or a stream's first event says of the replica:
    a rejection is the request's; anything else may be either's (SUSPECT)."""
    outcome = Outcome.REJECTED if isinstance(error, InvalidRequest) else Outcome.SUSPECT
    return outcome, signature(200, payload)


def from_error_event(error: dict[str, Any], rename: tuple[str, str]) -> GatewayError:
    """The client-facing error for an error an upstream put inside a 200 stream."""
    message = upstream_message(error)
    code = error.get("code")
    if message is not None:
        message = message.replace(*rename)
    if code in (400, 422, "400", "422") or error.get("type") in ("BadRequestError",):
        return _rejection(error, message)
    return UpstreamFailed(message or "The model service reported an error during generation.")
