"""How the mock service streams an answer: one event a token, at the configured pace, with
the faults a test asked for (a cut, an error event) and the quirks of the flavour it shows
(a stream interrupted by the next request, a body that lingers after [DONE])."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.mock.faults import TRACEBACK, Fault

if TYPE_CHECKING:
    from gateway.mock.server import MockState


async def stream(
    request: web.Request,
    state: MockState,
    fault: Fault,
    chat: bool,
    ident: str,
    created: int,
    words: list[str],
    finish: str,
    usage: dict[str, int],
    include_usage: bool,
    slow: float,
) -> web.StreamResponse:
    settings = state.settings
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": ident, "object": kind, "created": created, "model": settings.model}
        chunk["choices"] = choices
        chunk.update(extra)
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def piece(text: str | None, finish_reason: str | None) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    state.stats.streams_started += 1
    state.stats.running += 1
    interval = slow / settings.tokens_per_s
    arrivals = state.arrivals
    try:
        await asyncio.sleep(settings.ttft * slow)
        if chat:
            await response.write(
                event(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
        for index, word in enumerate(words):
            if fault.mode in ("cut", "stream_error") and index == fault.after_chunks:
                if fault.mode == "cut":
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                error = {
                    "error": {
                        "message": TRACEBACK,
                        "type": "InternalServerError",
                        "code": 500,
                    }
                }
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await response.write_eof()
                return response
            if state.token_gate is not None:
                await state.token_gate.acquire()
            if settings.interrupt_requests and state.arrivals != arrivals:
                await response.write(b"data: [DONE]\n\n")  # no finish reason: interrupted
                await response.write_eof()
                return response
            await response.write(event([piece(word, None)]))
            await asyncio.sleep(interval)
        await response.write(event([piece(None, finish)]))
        if include_usage:
            await response.write(event([], usage=usage))
        if fault.mode == "no_done":
            await response.write_eof()  # a clean end of the body, but no [DONE]
            return response
        await response.write(b"data: [DONE]\n\n")
        if settings.linger:
            await asyncio.sleep(settings.linger)
        await response.write_eof()
        state.stats.streams_completed += 1
    except (asyncio.CancelledError, ConnectionResetError):
        state.stats.streams_cancelled += 1
        state.cancelled.set()
        raise
    finally:
        state.stats.running -= 1
    return response
