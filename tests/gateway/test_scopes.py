"""A key is only ever served by a model inside its scope, whatever the route: aliases, virtual
models, the context-window fallback, fallback chains. A key scoped to phi-3-mini once got
answers from mixtral (a long prompt) and openchat (phi's replica down)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp

from actors.auth.keys import hash_secret
from gateway.http.state import STATE
from gateway.mock.faults import Fault
from gateway.process.config import GatewayConfig
from gateway.process.server import RunningServer, start_gateway
from tests.gateway.harness import Mock, mock_service, until

SECRET = "q" * 43
TIMEOUT = aiohttp.ClientTimeout(total=30)
LONG = [{"role": "user", "content": "word " * 1000}]  # ~1,250 tokens: over phi's 512
SHORT = [{"role": "user", "content": "hello"}]


def key(key_id: str) -> str:
    return f"sk-citadel-{key_id}-{SECRET}"


SCOPES: dict[str, list[str]] = {
    "00000000000a": ["phi-3-mini"],
    "00000000000b": ["phi"],  # by alias
    "00000000000c": ["*"],
    "00000000000d": ["auto"],
}
PHI, ALIAS, ANY, AUTO = (key(k) for k in SCOPES)


@asynccontextmanager
async def scoped_gateway() -> AsyncIterator[tuple[RunningServer, dict[str, Mock]]]:
    async with AsyncExitStack() as stack:
        mocks = {
            name: await stack.enter_async_context(mock_service(model=name, ttft=0.0))
            for name in ("phi-3-mini", "openchat-3.5", "mixtral-8x7b")
        }

        def model(name: str, window: int, **extra: Any) -> dict[str, Any]:
            probe = {
                "interval": 0.02,
                "jitter": 0.1,
                "healthy_threshold": 1,
                "unhealthy_threshold": 1,
            }
            backend = {"url": mocks[name].url, "health": probe}
            return {"name": name, "context_window": window, "backends": [backend], **extra}

        keys = [
            {"id": k, "secret_sha256": hash_secret(SECRET), "scopes": {"models": models}}
            for k, models in SCOPES.items()
        ]
        config = GatewayConfig.model_validate(
            {
                "listen": "127.0.0.1:0",
                "auth": {"keys": keys},
                "logging": {"access_log": False},
                "models": [
                    model(
                        "phi-3-mini",
                        512,
                        aliases=["phi"],
                        context_fallback="mixtral-8x7b",
                        fallbacks=["openchat-3.5"],
                    ),
                    model("openchat-3.5", 8192),
                    model("mixtral-8x7b", 32768),
                ],
                "virtual_models": [{"name": "auto", "candidates": ["phi-3-mini", "mixtral-8x7b"]}],
            }
        )
        server = await start_gateway(config)
        stack.push_async_callback(server.close)
        yield server, mocks


async def ask(
    http: aiohttp.ClientSession, server: RunningServer, api_key: str, model: str,
    messages: list[dict[str, str]], headers: dict[str, str] | None = None,
) -> tuple[int, str | None, dict[str, Any]]:  # fmt: skip
    async with http.post(
        server.url + "/v1/chat/completions",
        json={"model": model, "messages": messages},
        headers={"Authorization": f"Bearer {api_key}", **(headers or {})},
    ) as response:
        return response.status, response.headers.get("x-citadel-model"), await response.json()


async def test_no_fallback_takes_a_key_outside_its_scope() -> None:
    async with scoped_gateway() as (server, mocks), aiohttp.ClientSession(timeout=TIMEOUT) as http:
        # A prompt over phi's window: the key may not use mixtral, so no context fallback,
        # and the client gets what it would have got without one.
        for scoped in (PHI, ALIAS):
            status, served, body = await ask(http, server, scoped, "phi-3-mini", LONG)
            assert status == 400, body
            assert body["error"]["code"] == "context_length_exceeded"
        status, served, _ = await ask(http, server, ANY, "phi-3-mini", LONG)
        assert (status, served) == (200, "mixtral-8x7b")
        # The client's opt-out stops the context fallback too.
        no_fallback = {"x-citadel-no-fallback": "1"}
        status, _, body = await ask(http, server, ANY, "phi-3-mini", LONG, no_fallback)
        assert status == 400
        assert body["error"]["code"] == "context_length_exceeded"

        # phi's only replica fails its probes: the chain would go to openchat.
        mocks["phi-3-mini"].state.set_fault(Fault(mode="unhealthy"))
        loads = server.runner.app[STATE].layout.current.loads
        await until(lambda: not loads["phi-3-mini#0"].healthy)
        status, served, _ = await ask(http, server, ANY, "phi-3-mini", SHORT)
        assert (status, served) == (200, "openchat-3.5")
        for scoped in (PHI, ALIAS):
            status, served, _ = await ask(http, server, scoped, "phi", SHORT)
            assert served in (None, "phi-3-mini")  # its own model, in panic, or an error
        assert mocks["openchat-3.5"].state.stats.requests == 1  # the unscoped key's only
        assert mocks["mixtral-8x7b"].state.stats.requests == 1


async def test_scopes_by_alias_and_virtual_model() -> None:
    async with scoped_gateway() as (server, _), aiohttp.ClientSession(timeout=TIMEOUT) as http:
        assert (await ask(http, server, ALIAS, "phi-3-mini", SHORT))[:2] == (200, "phi-3-mini")
        assert (await ask(http, server, PHI, "phi", SHORT))[:2] == (200, "phi-3-mini")
        status, _, body = await ask(http, server, PHI, "mixtral-8x7b", SHORT)
        assert (status, body["error"]["code"]) == (403, "model_not_allowed")
        status, _, body = await ask(http, server, PHI, "auto", SHORT)
        assert (status, body["error"]["code"]) == (403, "model_not_allowed")
        # A virtual model in scope allows whichever model it picks.
        status, served, _ = await ask(http, server, AUTO, "auto", LONG)
        assert (status, served) == (200, "mixtral-8x7b")
        status, _, _ = await ask(http, server, AUTO, "mixtral-8x7b", SHORT)
        assert status == 403
