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

from actors.backend import Outcome
from gateway.errors import (
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


def from_status(
    status: int, payload: bytes, rename: tuple[str, str]
) -> tuple[GatewayError, Outcome]:
    """The client-facing error for an upstream's non-200 answer, and what it says about the
    replica. `rename` is (upstream model name, public id) so an echoed name is rewritten."""
    message = upstream_message(error_object(payload))
    if message is not None:
        message = message.replace(*rename)
    if status in (400, 422):
        return (
            InvalidRequest(
                message or "The model service rejected the request.", code="upstream_rejected"
            ),
            Outcome.OK,  # the replica is fine; the request was not
        )
    if status == 413:
        return InvalidRequest("The request is too large for the model service."), Outcome.OK
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
    return (
        UpstreamFailed(f"The model service failed (HTTP {status}) while processing the request."),
        Outcome.UPSTREAM_ERROR,
    )


def from_error_event(error: dict[str, Any], rename: tuple[str, str]) -> GatewayError:
    """The client-facing error for an error an upstream put inside a 200 stream."""
    message = upstream_message(error)
    code = error.get("code")
    if message is not None:
        message = message.replace(*rename)
    if code in (400, 422, "400", "422") or error.get("type") in ("BadRequestError",):
        return InvalidRequest(message or "The model service rejected the request.")
    return UpstreamFailed(message or "The model service reported an error during generation.")
