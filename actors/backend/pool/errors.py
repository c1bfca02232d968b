"""What can go wrong talking to a replica, in the terms the relay judges it by
(gateway.upstream.attempt.connection_failure). A deadline passing raises TimeoutError."""

from __future__ import annotations


class UpstreamClientError(Exception):
    """Talking to a replica failed: the connection, or the bytes on it."""


class ConnectFailed(UpstreamClientError):
    """No connection could be opened (refused, unreachable, DNS, TLS): the request never
    left the gateway."""


class ConnectionLost(UpstreamClientError):
    """The connection ended (or was closed by the gateway) before the answer was complete."""


class MalformedResponse(UpstreamClientError):
    """The replica sent bytes that are not an HTTP/1.1 answer (or more than one answer)."""
