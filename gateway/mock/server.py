"""The mock model service: an aiohttp app that answers like vLLM's OpenAI server."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.mock.faults import NO_FAULT, TRACEBACK, Fault
from gateway.mock.quirks import (
    Flavor,
    internal_error,
    over_window,
    refuses_request_id,
    wrong_type,
)
from gateway.mock.streams import stream
from gateway.mock.text import count_tokens, embedding, pack_float32, tokens

ECHO_SEPARATOR = "\x1e"  # ASCII's record separator: where an echoed answer's events split


class MockSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the name this service serves (its --served-model-name)")
    ttft: float = Field(0.02, ge=0, description="seconds before the first token")
    tokens_per_s: float = Field(200.0, gt=0)
    length: int = Field(16, ge=1, description="tokens per answer unless max_tokens is lower")
    embedding_dimensions: int = Field(64, ge=1)
    reports_usage: bool = Field(
        True, description="send a stream's usage report when asked (some servers never do)"
    )
    flavor: Flavor = Field("vllm", description="whose quirks to show (gateway.mock.quirks)")
    context_window: int | None = Field(None, ge=1, description="refuse longer prompts")
    interrupt_requests: bool = Field(
        False, description="llama-cpp-python's: a new request ends the running streams"
    )
    linger: float = Field(
        0.0, ge=0, description="seconds between a stream's [DONE] and the end of its body"
    )
    set_cookie: str | None = Field(
        None,
        description="a Set-Cookie on every answer, as a load balancer in front of a model "
        "server sends one (an AWS ALB's AWSALB sticky cookie)",
    )
    echo: bool = Field(
        False,
        description="answer with the last message's text (a completion's prompt), one event "
        f"per piece between {ECHO_SEPARATOR!r} characters, or per 4 characters without one",
    )


def echoed(prompt: Any) -> list[str]:
    """The pieces an echoing service answers with: what the last message says."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        content = prompt[-1].get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        prompt = content
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    if ECHO_SEPARATOR in text:
        return text.split(ECHO_SEPARATOR)
    return [text[i : i + 4] for i in range(0, len(text), 4)] or [""]


@dataclass
class MockStats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    running: int = 0
    last_body: dict[str, Any] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)


class MockState:
    """Everything a test may look at or change while the service runs."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.fault = NO_FAULT
        self.stats = MockStats()
        self.cancelled = asyncio.Event()  # set whenever a stream is cut by its client
        # When set, a stream sends each token only after the test releases it: lets a test
        # prove that the gateway relays every event as it comes, without timing.
        self.token_gate: asyncio.Semaphore | None = None
        self.health_checks = 0
        self.reported_waiting = 0  # what /metrics says is queued
        self.arrivals = 0  # generation requests so far (interrupt_requests watches it)
        self.request_ids: list[str | None] = []  # X-Request-ID of every request, in order
        self._health_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def health_checked(self) -> None:
        self.health_checks += 1
        for count, waiter in list(self._health_waiters):
            if self.health_checks >= count and not waiter.done():
                waiter.set_result(None)

    async def wait_health_checks(self, count: int) -> None:
        """Until /health has been asked `count` times in all."""
        if self.health_checks >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._health_waiters.append((count, waiter))
        try:
            await waiter
        finally:
            self._health_waiters.remove((count, waiter))

    def set_fault(self, fault: Fault) -> None:
        self.fault = fault

    def take_fault(self) -> Fault:
        fault = self.fault
        if fault.count is not None:
            remaining = fault.count - 1
            self.fault = fault.model_copy(update={"count": remaining}) if remaining else NO_FAULT
        return fault


MOCK_STATE = web.AppKey("mock_state", MockState)


def _error(status: int, message: str, error_type: str) -> web.Response:
    body = {
        "object": "error",
        "message": message,
        "type": error_type,
        "param": None,
        "code": status,
    }
    return web.json_response(body, status=status)


async def _apply_fault(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    if fault.mode == "error":
        return _error(fault.status, fault.message or TRACEBACK, "InternalServerError")
    if fault.mode == "hang":
        await asyncio.Event().wait()
    if fault.mode == "reset":
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise ConnectionResetError("mock reset")
    if fault.mode == "malformed":
        return web.Response(text="<html><body>502 Bad Gateway</body></html>", status=200)
    return None


async def _read_json(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _error(400, "Invalid JSON body", "BadRequestError")
    if not isinstance(body, dict):
        return _error(400, "Body must be an object", "BadRequestError")
    return body


async def _arrive(request: web.Request) -> tuple[MockState, dict[str, Any], Fault] | web.Response:
    """Count and record a request, read its body, and take the fault it meets."""
    state = request.app[MOCK_STATE]
    state.stats.requests += 1
    state.request_ids.append(request.headers.get("X-Request-ID"))
    if refuses_request_id(state.settings.flavor, request):
        return web.Response(status=400)  # llama-cpp-python: no body at all
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    state.stats.last_body = body
    state.stats.last_headers = {k.lower(): v for k, v in request.headers.items()}
    fault = state.take_fault()
    failed = await _apply_fault(request, fault)
    if failed is not None:
        assert isinstance(failed, web.Response)
        return failed
    return state, body, fault


async def generate(request: web.Request) -> web.StreamResponse:
    arrived = await _arrive(request)
    if isinstance(arrived, web.Response):
        return arrived
    state, body, fault = arrived
    settings = state.settings
    state.arrivals += 1
    if body.get("model") != settings.model:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
    flavor = settings.flavor
    if flavor == "llama-cpp-python" and (complaint := wrong_type(body)) is not None:
        return internal_error(complaint)
    chat = request.path.endswith("/chat/completions")
    if chat and not isinstance(body.get("messages"), list):
        return _error(400, "messages: field required", "BadRequestError")
    prompt_source = body.get("messages") if chat else body.get("prompt")
    prompt_tokens = count_tokens(prompt_source or "")
    window = settings.context_window
    if window is not None and prompt_tokens > window:
        return over_window(flavor, body.get("stream") is True, prompt_tokens, window)
    if flavor == "llama-server" and isinstance(body.get("n"), int) and body["n"] > 1:
        return web.json_response(
            {
                "error": {
                    "code": 400,
                    "message": "Only one completion choice is allowed",
                    "type": "invalid_request_error",
                }
            },
            status=400,
        )
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or settings.length
    length = min(int(max_tokens), settings.length)
    finish = "length" if length < settings.length else "stop"
    words = tokens(json.dumps(prompt_source, sort_keys=True), length)
    if settings.echo:
        words = echoed(prompt_source)
        length, finish = len(words), "stop"
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": length,
        "total_tokens": prompt_tokens + length,
    }
    slow = fault.slow_factor if fault.mode == "slow" else 1.0
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if body.get("stream") is True:
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        include_usage = asked and settings.reports_usage and flavor != "llama-cpp-python"
        return await stream(
            request, state, fault, chat, ident, created, words, finish, usage, include_usage, slow
        )
    await asyncio.sleep(settings.ttft * slow + length / settings.tokens_per_s * slow)
    text = "".join(words)
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return web.json_response(
        {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": settings.model,
            "choices": [choice],
            "usage": usage,
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    arrived = await _arrive(request)
    if isinstance(arrived, web.Response):
        return arrived
    state, body, _ = arrived
    if body.get("model") != state.settings.model:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
    if state.settings.flavor == "llama-cpp-python":
        return internal_error("Llama model must be created with embedding=True to call this method")
    inputs = body.get("input")
    items = (
        inputs
        if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
        else [inputs]
    )
    dimensions = int(body.get("dimensions") or state.settings.embedding_dimensions)
    data = []
    for index, item in enumerate(items):
        vector = embedding(item if isinstance(item, str) else json.dumps(item), dimensions)
        value: Any = vector
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(pack_float32(vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    prompt_tokens = count_tokens(inputs)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": state.settings.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


async def models(request: web.Request) -> web.Response:
    model = request.app[MOCK_STATE].settings.model
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": 0, "owned_by": "vllm"}],
        }
    )


async def health(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if state.settings.flavor == "llama-cpp-python":
        raise web.HTTPNotFound()  # it has no /health
    state.health_checked()
    fault = state.fault
    if fault.mode in ("error", "unhealthy"):
        return web.Response(status=503)
    if fault.mode == "hang":
        await asyncio.Event().wait()
    return web.Response(status=200)


async def openapi(request: web.Request) -> web.Response:
    """FastAPI's schema, which llama-cpp-python serves without taking its model lock."""
    state = request.app[MOCK_STATE]
    state.health_checked()
    fault = state.fault
    if fault.mode in ("error", "unhealthy"):
        return web.Response(status=503)
    return web.json_response({"openapi": "3.1.0", "info": {"title": "mock"}, "paths": {}})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    name = state.settings.model
    text = (
        f'vllm:num_requests_running{{model_name="{name}"}} {state.stats.running}\n'
        f'vllm:num_requests_waiting{{model_name="{name}"}} {state.reported_waiting}\n'
    )
    return web.Response(text=text, content_type="text/plain")


async def set_fault(request: web.Request) -> web.Response:
    try:
        fault = Fault.model_validate_json(await request.read())
    except ValidationError as exc:
        return _error(400, str(exc), "BadRequestError")
    request.app[MOCK_STATE].set_fault(fault)
    return web.json_response(fault.model_dump())


async def get_stats(request: web.Request) -> web.Response:
    stats = request.app[MOCK_STATE].stats
    return web.json_response(
        {
            "requests": stats.requests,
            "streams_started": stats.streams_started,
            "streams_completed": stats.streams_completed,
            "streams_cancelled": stats.streams_cancelled,
            "running": stats.running,
        }
    )


def create_mock_app(settings: MockSettings) -> web.Application:
    app = web.Application()
    app[MOCK_STATE] = MockState(settings)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/mock/fault", set_fault)
    app.router.add_get("/mock/stats", get_stats)
    if settings.set_cookie is not None:
        app.on_response_prepare.append(_set_cookie)
    return app


async def _set_cookie(request: web.Request, response: web.StreamResponse) -> None:
    cookie = request.app[MOCK_STATE].settings.set_cookie
    if cookie is not None:
        response.headers["Set-Cookie"] = cookie
