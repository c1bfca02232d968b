"""Who may call the gateway: the HTTP side of AuthActor.

The key comes from `Authorization: Bearer …`, or from `api-key` (Azure-style clients).
AuthActor decides who the caller is; this module turns its refusals into OpenAI errors and
checks the key's scopes against the endpoint, the model and the admin API.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from actors.auth.actor import (
    ANONYMOUS,
    Authenticate,
    AuthRefused,
    Principal,
    Refusal,
    retry_seconds,
)
from actors.auth.keys import Endpoint
from gateway.http.asks import ask
from gateway.http.client_address import client_address
from gateway.http.errors import (
    AuthenticationFailed,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from gateway.http.state import GatewayState

_INVALID = "Incorrect API key provided. You can find your API key in your citadel admin's keys."


def presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.headers.get("api-key") or None


def presented_secrets(request: web.Request) -> tuple[str, ...]:
    """Whatever the request carries as a key, well-formed or not: values never to echo."""
    found = []
    header = request.headers.get("Authorization")
    if header:
        found.append(header.partition(" ")[2].strip() or header)
    if api_key := request.headers.get("api-key"):
        found.append(api_key)
    return tuple(found)


async def _principal(state: GatewayState, request: web.Request) -> Principal:
    address = client_address(request, state.config.connections.proxy_networks)
    message = Authenticate(presented_key(request), address)
    try:
        # A key store lookup is a deferred reply: answered when the store has.
        principal = await ask(state.auth, message, "auth service")
    except AuthRefused as refused:
        if refused.reason is Refusal.MISSING:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            ) from None
        if refused.reason is Refusal.THROTTLED:
            wait = retry_seconds(refused.retry_after)
            raise RateLimited(
                "Too many failed authentication attempts from this address. Retry later.",
                code="too_many_auth_failures",
                headers={"Retry-After": str(wait)},
            ) from None
        if refused.reason is Refusal.UNAVAILABLE:
            raise ServiceUnavailable("The key store did not answer. Retry shortly.") from None
        raise AuthenticationFailed(_INVALID) from None
    return principal


async def authenticate(state: GatewayState, request: web.Request, endpoint: Endpoint) -> Principal:
    """The caller of a model endpoint (`chat.completions`, `completions`, `embeddings`,
    `models`); 401 without a valid key, 403 when the key may not use the endpoint."""
    if not state.auth_enabled:
        return ANONYMOUS  # no model keys configured (a warning was logged at start)
    principal = await _principal(state, request)
    if principal.admin_only:
        raise AuthenticationFailed(_INVALID)  # an admin key is no model key
    if not principal.scopes.allows_endpoint(endpoint):
        raise PermissionDenied(
            f"This API key may not use the {endpoint} endpoint.", code="endpoint_not_allowed"
        )
    return principal


def allowed_models(principal: Principal, canonical: Mapping[str, str]) -> frozenset[str] | None:
    """The configured models and virtual models the key may be served by (an alias in its
    scope allows the model it names), or None when it may use any."""
    models = principal.scopes.models
    if "*" in models:
        return None
    return frozenset(canonical[m] for m in models if m in canonical)


def require_model(
    sent: str, served: str, allowed: frozenset[str] | None, state: GatewayState
) -> None:
    """403 unless the key may use the model it named and the one that serves it (a virtual
    model in scope allows whichever model it picks). The router only ever falls back to
    allowed models: this is the edge's own check of what it chose."""
    if allowed is None:
        return
    named = state.canonical.get(sent)
    if named in allowed and (served in allowed or named in state.virtual):
        return
    raise PermissionDenied(
        f"This API key may not use the model '{sent}'.", param="model", code="model_not_allowed"
    )


async def authenticate_admin(state: GatewayState, request: web.Request) -> Principal:
    """An admin key: 401 without a valid key, 403 for a key without the admin flag. The admin
    API is closed when no admin key exists."""
    if presented_key(request) is None:
        raise AuthenticationFailed("The admin API needs an admin key.")
    principal = await _principal(state, request)
    if principal is ANONYMOUS or not principal.scopes.admin:
        raise PermissionDenied("This key may not use the admin API.", code="admin_required")
    return principal
