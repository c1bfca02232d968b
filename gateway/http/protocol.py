"""The HTTP connection itself: its errors, answered and logged the gateway's way, and its
share of the process (how many connections, from whom).

aiohttp answers a request its parser refuses (a control character in a header, an obs-fold,
a header over 8 KiB, a bad query) with a plain-text 400 that quotes the offending bytes, and
logs it with a traceback that quotes them again: an `Authorization` header with a trailing
`\\x01` put the whole API key in the log and back in the body. Here such a request gets an
OpenAI-shaped JSON error that quotes nothing, and one log line naming only the error's class;
those lines (anyone can cause them, without a key) are bounded by a `LogBudget`.

aiohttp offers no hook for this: `GatewayRunner` serves connections with
`GatewayRequestHandler`, a subclass of aiohttp's own that overrides its two error methods.
tests/gateway/test_hostile_http.py pins the behaviour, so an aiohttp upgrade that moves them
fails there.

Connections are capped in total and per client address (`ConnectionCaps`): one past a cap
gets a 503 and is closed at once. A connection with no complete request (silent, trickling
its headers, or idle between requests) is closed after `connections.idle_timeout`: that is
aiohttp's keep-alive timer, which it arms when the connection opens.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.process.observability import LogBudget

log = structlog.get_logger("gateway.http")


_CODES = {415: "unsupported_content_encoding"}
_MESSAGES = {
    400: "The request could not be parsed as HTTP.",
    413: "The request is too large.",
    415: "The request body's Content-Encoding is not supported: send it as identity, gzip "
    "or deflate.",
    431: "The request's headers are too large.",
    500: "The server had an error while processing your request.",
    504: "The server did not answer in time.",
}


class ConnectionCaps:
    """Open connections, in total and per client address, against their caps."""

    __slots__ = ("by_client", "per_client", "total", "total_cap")

    def __init__(self, total_cap: int, per_client: int) -> None:
        self.total_cap = total_cap
        self.per_client = per_client
        self.total = 0
        self.by_client: dict[str, int] = {}

    def admit(self, client: str) -> bool:
        held = self.by_client.get(client, 0)
        if self.total >= self.total_cap or held >= self.per_client:
            return False
        self.total += 1
        self.by_client[client] = held + 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        held = self.by_client.pop(client, 1) - 1
        if held:
            self.by_client[client] = held


_BUSY_BODY = (
    b'{"error": {"message": "Too many open connections. Retry shortly.", "type": '
    b'"service_unavailable", "param": null, "code": "too_many_connections"}}'
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1"
    b"\r\nConnection: close\r\nContent-Length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler, with errors that never quote the request and a place
    under the connection caps."""

    budget: LogBudget  # shared by every connection of one server (set by GatewayRunner)
    caps: ConnectionCaps | None
    _client: str | None = None  # admitted under the caps as this address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.caps is None:
            return
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        if self.caps.admit(client):
            self._client = client
            return
        self._log("connection_refused", 503, None, client)
        assert isinstance(transport, asyncio.Transport)
        transport.write(BUSY)
        self.force_close()
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is not None and self.caps is not None:
            self.caps.release(self._client)
            self._client = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request the parser refused, or whose handler failed outside the
        app's own error handling. `message` (the parser's, which quotes the request) is
        never used."""
        if isinstance(exc, ContentEncodingError):  # br or zstd, which aiohttp cannot decode
            status = 415
        event = "http_request_refused" if status < 500 else "http_server_error"
        self._log(event, status, exc, request.remote)
        if request.writer.output_size > 0:  # as aiohttp: a response was already under way
            raise ConnectionError("the response had started; no error response can follow")
        client_error = status < 500
        body = {
            "error": {
                "message": _MESSAGES.get(status, "The request could not be handled."),
                "type": "invalid_request_error" if client_error else "server_error",
                "param": None,
                "code": _CODES.get(status, "invalid_http_request") if client_error else None,
            }
        }
        response = web.json_response(body, status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's other error logs (a handler that returned no response, an unhandled
        exception): one line with the error's class, never its text."""
        exc = kw.get("exc_info")
        self._log("http_server_error", 500, exc if isinstance(exc, BaseException) else None, None)

    def _log(self, event: str, status: int, exc: BaseException | None, remote: str | None) -> None:
        dropped = self.budget.take()
        if dropped is None:
            return
        log.warning(
            event,
            status=status,
            reason=type(exc).__name__ if exc is not None else None,
            remote=remote,
            suppressed=dropped or None,
        )


class _GatewayServer(web.Server):
    budget: LogBudget
    caps: ConnectionCaps | None

    def __call__(self) -> RequestHandler:
        handler = GatewayRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.budget = self.budget
        handler.caps = self.caps
        return handler


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are handled by GatewayRequestHandler, under `caps`
    (None: no caps)."""

    def __init__(
        self, app: web.Application, *, caps: ConnectionCaps | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._caps = caps

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds a plain aiohttp Server; it becomes ours in place (same attributes,
        # one method more), since aiohttp takes no handler class.
        server.__class__ = _GatewayServer
        assert isinstance(server, _GatewayServer)
        server.budget = LogBudget()
        server.caps = self._caps
        return server
