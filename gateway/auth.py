"""Who may call the gateway: a pluggable check on every model endpoint.

`StaticKeys` accepts the API keys listed in the configuration. Keys are compared by their
SHA-256 digest, so lookup time does not depend on how much of a key matches.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from aiohttp import web

from gateway.errors import AuthenticationFailed


class Authenticator(Protocol):
    def authenticate(self, request: web.Request) -> str:
        """The caller's key id, or raise AuthenticationFailed."""
        ...


def presented_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer …`, or from `api-key` (Azure-style clients)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.headers.get("api-key") or None


class StaticKeys:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._ids = {
            hashlib.sha256(key.encode()).digest(): f"static-{index}"
            for index, key in enumerate(keys)
        }

    @property
    def enabled(self) -> bool:
        return bool(self._ids)

    def authenticate(self, request: web.Request) -> str:
        if not self._ids:
            return "anonymous"
        key = presented_key(request)
        if key is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        key_id = self._ids.get(hashlib.sha256(key.encode()).digest())
        if key_id is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return key_id
