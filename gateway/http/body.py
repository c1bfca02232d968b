"""Reading a request's body: only once the caller is known and the declared size fits, only in
encodings the gateway accepts, and never a 500 for one that is not what its
Content-Encoding says (a gzip body that is not gzip once was).

`Expect: 100-continue` is answered here too: aiohttp sends `100 Continue` before any handler
runs, inviting a stranger to send a declared 10 GB body; `later_continue` (each body route's
expect handler) defers it to `read_body`, after the key and the declared length are checked.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.http.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedEncoding
from gateway.http.state import STATE

# What aiohttp decodes without optional packages (br and zstd need Brotli and zstandard).
ACCEPTED_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})


async def later_continue(request: web.Request) -> None:
    """An expect handler that sends nothing yet (read_body does); other expectations: 417."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="Only Expect: 100-continue is understood.")


async def read_body(request: web.Request) -> bytes:
    """The body of a request whose caller the handler has already authenticated."""
    limit = request.app._client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("The request body is too large.", headers={"Connection": "close"})
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own: the answer has not started
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ACCEPTED_ENCODINGS:
        raise UnsupportedEncoding(
            "The request body's Content-Encoding is not supported: send it as identity, gzip "
            "or deflate.",
            headers={"Accept-Encoding": "identity, gzip, deflate"},
        )
    try:
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            return await request.read()
        async with asyncio.timeout(request.app[STATE].config.connections.body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            "The request body did not arrive in time.", headers={"Connection": "close"}
        ) from None
    except RequestPayloadError:
        raise InvalidRequest(
            "The request body could not be decoded as its Content-Encoding says.",
            code="invalid_content_encoding",
            headers={"Connection": "close"},  # the rest of the body is unread
        ) from None
