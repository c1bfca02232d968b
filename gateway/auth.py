"""Who may call the gateway: a pluggable check on every model endpoint.

`StaticKeys` accepts the API keys listed in the configuration. Keys are compared by their
SHA-256 digest, so lookup time does not depend on how much of a key matches.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from aiohttp import web

from gateway.errors import AuthenticationFailed, PermissionDenied


class Authenticator(Protocol):
    def authenticate(self, request: web.Request) -> str:
        """The caller's key id, or raise AuthenticationFailed."""
        ...

    def authenticate_admin(self, request: web.Request) -> str:
        """The caller's admin key id, or raise AuthenticationFailed / PermissionDenied."""
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


def _digests(keys: tuple[str, ...], prefix: str) -> dict[bytes, str]:
    return {hashlib.sha256(key.encode()).digest(): f"{prefix}-{i}" for i, key in enumerate(keys)}


class StaticKeys:
    def __init__(self, keys: tuple[str, ...], admin_keys: tuple[str, ...] = ()) -> None:
        self._ids = _digests(keys, "static")
        self._admin_ids = _digests(admin_keys, "admin")

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

    def authenticate_admin(self, request: web.Request) -> str:
        """The admin key's id; 401 without a valid key, 403 for a model key. The admin API
        is closed when no admin key is configured."""
        key = presented_key(request)
        if key is None:
            raise AuthenticationFailed("The admin API needs an admin key.")
        digest = hashlib.sha256(key.encode()).digest()
        admin_id = self._admin_ids.get(digest)
        if admin_id is not None:
            return admin_id
        if digest in self._ids:
            raise PermissionDenied("This key may not use the admin API.", code="admin_required")
        raise AuthenticationFailed("Incorrect API key provided.")
