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


def request_body(raw: bytes, sent_model: str, upstream_model: str) -> bytes:
    """The client's body with "model" set to the upstream's name; the raw bytes when equal."""
    if sent_model == upstream_model:
        return raw
    payload = json.loads(raw)
    payload["model"] = upstream_model
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@lru_cache(maxsize=1024)
def response_rewriter(upstream_model: str, public_model: str) -> Callable[[bytes], bytes]:
    """A function replacing the upstream's model name with the public id in response bytes."""
    if upstream_model == public_model:
        return _identity
    upstream = json.dumps(upstream_model)[1:-1].encode()
    public = json.dumps(public_model)[1:-1].encode()
    pattern = re.compile(rb'("model"\s*:\s*")' + re.escape(upstream) + rb'"')
    replacement = b"\\1" + public.replace(b"\\", b"\\\\") + b'"'

    def rewrite(data: bytes) -> bytes:
        return pattern.sub(replacement, data)

    return rewrite


def _identity(data: bytes) -> bytes:
    return data
