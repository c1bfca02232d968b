"""A fixed-answer OpenAI-style upstream, cheap enough never to be the bottleneck.

Raw asyncio protocol on uvloop: HTTP/1.1 keep-alive, Content-Length request bodies, a canned
chat completion, or (when the body asks for "stream": true) a chunked SSE stream of
`--chunks` events, the first after `--ttft-ms`, then one every `--interval-ms`.

    python -m ops.bench.upstream --port 18001
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import uvloop

MODEL = "bench/upstream-model"


def _answer() -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
        }
    ).encode()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(index: int) -> bytes:
    payload = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": f" tok{index}"}, "finish_reason": None}],
    }
    return _chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
STREAM_TAIL = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Upstream(asyncio.Protocol):
    def __init__(self, answer: bytes, chunks: int, ttft: float, interval: float) -> None:
        self._answer = answer
        self._events = [_event(i) for i in range(chunks)]
        self._ttft = ttft
        self._interval = interval
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self._busy:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            if b'"stream":true' in body.replace(b" ", b""):
                self._busy = True
                asyncio.get_running_loop().create_task(self._stream())
                return
            assert self._transport is not None
            self._transport.write(self._answer)

    async def _stream(self) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(STREAM_HEAD)
        await asyncio.sleep(self._ttft)
        for index, event in enumerate(self._events):
            if transport.is_closing():
                return
            if index:
                await asyncio.sleep(self._interval)
            transport.write(event)
        transport.write(STREAM_TAIL)
        self._busy = False
        self._serve_buffered()


async def serve(port: int, chunks: int, ttft_ms: float, interval_ms: float) -> None:
    loop = asyncio.get_running_loop()
    answer = _answer()
    server = await loop.create_server(
        lambda: Upstream(answer, chunks, ttft_ms / 1000, interval_ms / 1000),
        "127.0.0.1",
        port,
        backlog=4096,
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.chunks, args.ttft_ms, args.interval_ms))


if __name__ == "__main__":
    main()
