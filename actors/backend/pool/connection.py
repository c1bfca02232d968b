"""UpstreamConnection: one keep-alive socket to a replica, carrying one request at a time.

The protocol object is also its parser's callback target: httptools (llhttp) calls the `on_*`
methods as it recognises the answer's parts, from inside `data_received`. The request task
waits on at most one future at a time (the head, then the body as it arrives); every way the
exchange can end (the answer complete, the socket lost, a malformed byte, the deadline, the
gateway closing it) wakes that future, so no wait can outlive its connection.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from actors.backend.pool.errors import ConnectionLost, MalformedResponse

# Bytes of status line and headers after which an answer is malformed: llhttp sets no limit.
HEAD_LIMIT = 64 * 1024
# Body bytes buffered unread after which reading from the socket pauses: a stream's client
# that reads slowly holds back its upstream (TCP flow control), not the gateway's memory.
PAUSE_ABOVE = 256 * 1024


class UpstreamConnection(asyncio.Protocol):
    """One connection; `send` starts an exchange, `finish` ends it (the pool's to call)."""

    __slots__ = (
        "_active",
        "_body",
        "_buffered",
        "_complete",
        "_error",
        "_framed",
        "_head_bytes",
        "_header_bytes",
        "_headers_done",
        "_informational",
        "_loop",
        "_parser",
        "_paused",
        "_status",
        "_transport",
        "_waiter",
        "_whole",
        "dropped",
        "idle_since",
        "keep_alive",
        "lost",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._active = False  # a request was sent and its exchange has not been finished
        self._reset()
        self.lost = False  # the socket is gone (or going)
        self.dropped = False  # the pool no longer counts it (UpstreamPool._drop)
        self.idle_since = 0.0

    def _reset(self) -> None:
        self._status = 0
        self._headers_done = False
        self._informational = False  # a 1xx answer before the real one: skipped
        self._framed = False  # Content-Length or Transfer-Encoding: its end is in the bytes
        self._head_bytes = 0  # bytes received while the head is incomplete
        self._header_bytes = 0  # the header lines' names and values, as parsed
        self._body: list[bytes] = []
        self._buffered = 0
        self._whole = False  # read whole: never pause the socket
        self._paused = False
        self._complete = False
        self._error: BaseException | None = None
        self.keep_alive = False

    # -- the request task's side -----------------------------------------------------

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly and the replica keeps the connection open."""
        return self._complete and self.keep_alive and self._error is None and not self.lost

    def send(self, request: bytes) -> None:
        self._reset()
        self._active = True
        cast(asyncio.Transport, self._transport).write(request)

    def finish(self, now: float) -> None:
        """The exchange is over: the connection waits, idle, for the next one."""
        self._active = False
        self._body = []
        self.idle_since = now

    async def head(self) -> int:
        """The answer's status, once its headers are in."""
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._status

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some if none did;
        b"" once the body is complete."""
        while not self._body:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._buffered = 0
        if self._paused:
            self._resume()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True
        if self._paused:
            self._resume()
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = self._body
        self._body = []
        return body[0] if len(body) == 1 else b"".join(body)

    def fail(self, error: BaseException) -> None:
        """End the exchange with `error` (the deadline passed, or the gateway closes the
        connection) and the connection with it: its answer, if it comes, is not wanted."""
        if self._error is None and not self._complete:
            self._error = error
        self.close()
        self._wake()

    def expire(self) -> None:
        self.fail(TimeoutError("the model service did not answer within the deadline"))

    def close(self) -> None:
        self.lost = True
        if self._active and not self._complete and self._error is None:
            self._error = ConnectionLost("the connection was closed before the answer ended")
            self._wake()
        if self._transport is not None:
            self._transport.close()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._active or self._error is not None:
            # Bytes nobody asked for (or after a failure): this connection can't be trusted
            # to frame the next answer.
            self.lost = True
            cast(asyncio.Transport, self._transport).close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(MalformedResponse("the model service switched protocols"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if not isinstance(cause, MalformedResponse):  # raised by a callback of ours
                cause = MalformedResponse(f"the model service's answer is not HTTP/1.1: {exc}")
            self.fail(cause)
            return
        if not self._headers_done:  # a head still incomplete: every byte so far is its
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT:
                self.fail(MalformedResponse(f"the answer's headers exceed {HEAD_LIMIT} bytes"))

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost says what that meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._active and not self._complete and self._error is None:
            if self._headers_done and not self._framed:
                self._complete = True  # a body delimited by the connection's end: complete
            else:
                where = "in its body" if self._headers_done else "before answering"
                self._error = ConnectionLost(f"the model service closed the connection {where}")
        self._wake()

    # -- httptools' callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request: nothing can frame the next
            self.keep_alive = False
            self.lost = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a chunked body's trailer
        # A head that arrives whole is never seen incomplete by data_received's check.
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > HEAD_LIMIT:
            raise MalformedResponse(f"the answer's headers exceed {HEAD_LIMIT} bytes")
        if not self._framed:
            lowered = name.lower()
            self._framed = lowered == b"content-length" or lowered == b"transfer-encoding"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        self._status = status
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > PAUSE_ABOVE and not self._whole and not self._paused:
            self._paused = True
            cast(asyncio.Transport, self._transport).pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self._framed = False
            self._head_bytes = self._header_bytes = 0
            return
        if self._complete:
            return
        self._complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()
