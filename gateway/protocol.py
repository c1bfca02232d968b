"""The HTTP connection's own errors, answered and logged the gateway's way.

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
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.observability import LogBudget

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


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler, with errors that never quote the request."""

    budget: LogBudget  # shared by every connection of one server (set by GatewayRunner)

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

    def __call__(self) -> RequestHandler:
        handler = GatewayRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.budget = self.budget
        return handler


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are handled by GatewayRequestHandler."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds a plain aiohttp Server; it becomes ours in place (same attributes,
        # one method more), since aiohttp takes no handler class.
        server.__class__ = _GatewayServer
        assert isinstance(server, _GatewayServer)
        server.budget = LogBudget()
        return server
