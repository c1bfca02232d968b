"""The public model id on the way down, the upstream's served name on the way up.

A backend may serve a model under another name (vLLM's --served-model-name). Requests are
rewritten through a JSON round trip only when the name differs; responses and stream events
are rewritten on the bytes, with a pattern that can only match the structural `"model"` key:
inside a JSON string every quote is escaped, so `"model": "x"` with bare quotes cannot occur
in generated text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def request_body(raw: bytes, sent_model: str, upstream_model: str) -> bytes:
    """The client's body with "model" set to the upstream's name; the raw bytes when equal.

    The value is spliced into the client's bytes, so every other byte goes up exactly as sent;
    only when that cannot be done safely (an escaped spelling of the name, a duplicate key)
    does the body go through a JSON round trip.
    """
    if sent_model == upstream_model:
        return raw
    spliced = _splice_model(raw, sent_model, upstream_model)
    if spliced is not None:
        return spliced
    payload = json.loads(raw)
    payload["model"] = upstream_model
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@lru_cache(maxsize=1024)
def _model_key(sent_model: str) -> re.Pattern[bytes]:
    return re.compile(rb'"model"\s*:\s*' + re.escape(json.dumps(sent_model).encode()))


@lru_cache(maxsize=1024)
def _model_member(upstream_model: str) -> bytes:
    # json.dumps with an argument builds a JSONEncoder per call: once per name, not per request.
    return b'"model":' + json.dumps(upstream_model, ensure_ascii=False).encode()


def _splice_model(raw: bytes, sent_model: str, upstream_model: str) -> bytes | None:
    found: re.Match[bytes] | None = None
    for match in _model_key(sent_model).finditer(raw):
        prefix = raw[: match.start()]
        if b'"' in prefix:
            # Bare quotes in valid JSON always delimit strings, so after blanking the strings
            # the brackets left in front of the match give its depth.
            prefix = _JSON_STRING.sub(b'""', prefix)
        # The top level is depth 1.
        depth = prefix.count(b"{") + prefix.count(b"[") - prefix.count(b"}") - prefix.count(b"]")
        if depth == 1:
            if found is not None:
                return None  # a duplicate key: let the JSON parser decide which one counts
            found = match
    if found is None:
        return None
    return raw[: found.start()] + _model_member(upstream_model) + raw[found.end() :]


@lru_cache(maxsize=1024)
def response_rewriter(upstream_model: str, public_model: str) -> Callable[[bytes], bytes]:
    """A function replacing the upstream's model name with the public id in response bytes."""
    if upstream_model == public_model:
        return _identity
    upstream = json.dumps(upstream_model)[1:-1].encode()
    public = json.dumps(public_model)[1:-1].encode()
    pattern = re.compile(rb'("model"\s*:\s*")' + re.escape(upstream) + rb'"')
    replacement = b"\\1" + public.replace(b"\\", b"\\\\") + b'"'
    # Fast path for the two spellings servers actually emit (compact, and Python's default
    # separators): bytes.replace, far cheaper per stream event than a regex.
    compact = (b'"model":"' + upstream + b'"', b'"model":"' + public + b'"')
    spaced = (b'"model": "' + upstream + b'"', b'"model": "' + public + b'"')

    def rewrite(data: bytes) -> bytes:
        data = data.replace(*compact).replace(*spaced)
        if upstream in data:  # another spelling, or the name elsewhere: the regex decides
            data = pattern.sub(replacement, data)
        return data

    return rewrite


def _identity(data: bytes) -> bytes:
    return data


def with_stream_usage(raw: bytes) -> bytes:
    """The body of a stream with `stream_options.include_usage` on, so that the upstream
    reports the tokens it used (for limits and the usage ledger) even when the client did
    not ask; the gateway then hides that report from the client (sse.drop_usage_events)."""
    if b'"stream_options"' not in raw:
        start = raw.index(b"{") + 1
        return raw[:start] + b'"stream_options":{"include_usage":true},' + raw[start:]
    payload = json.loads(raw)
    options = payload.get("stream_options")
    payload["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
