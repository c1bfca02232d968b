"""`citadel-gateway demo`: the four default model services as mocks, and the gateway in front
of them on 127.0.0.1:8000, in one process that stops cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

import structlog

from actors.ledger.actor import LedgerSettings
from gateway.cache.settings import CachePolicy, CacheSettings
from gateway.mock.server import MockSettings, create_mock_app
from gateway.process.config import AuthSettings, GatewayConfig
from gateway.process.defaults import (
    DEFAULT_MODELS,
    DEFAULT_VIRTUAL_MODELS,
    DEMO_ADMIN_KEY,
    DEMO_API_KEY,
)
from gateway.process.server import RunningServer, start_gateway, start_server

log = structlog.get_logger("gateway.process.demo")


def demo_config(listen: str = "127.0.0.1:8000", state: Path | None = None) -> GatewayConfig:
    """The demo's configuration; with `state`, a key store and a usage ledger in it."""
    return GatewayConfig(
        listen=listen,
        models=DEFAULT_MODELS,
        virtual_models=DEFAULT_VIRTUAL_MODELS,
        auth=AuthSettings(
            api_keys=(DEMO_API_KEY,),
            admin_keys=(DEMO_ADMIN_KEY,),
            key_store=str(state / "keys.db") if state else None,
        ),
        usage=LedgerSettings(path=str(state / "usage.db")) if state else None,
        # Deterministic requests (temperature 0, or a seed) cached in memory: send one twice
        # and the second says x-citadel-cache: hit.
        cache=CacheSettings(default=CachePolicy()),
    )


def usage_text(url: str, state: Path | None = None) -> str:
    where = (
        ""
        if state is None
        else f"""
Keys and usage are kept in {state}:
  citadel-gateway keys create --db {state}/keys.db --name me --rpm 60 --models phi-3-mini
  citadel-gateway usage --db {state}/usage.db
  curl {url}/admin/usage -H "Authorization: Bearer {DEMO_ADMIN_KEY}"
"""
    )
    return f"""
citadel-gateway demo is running on {url}  (Ctrl-C stops everything)
API key: {DEMO_API_KEY}    admin key: {DEMO_ADMIN_KEY}
{where}
  curl {url}/v1/models -H "Authorization: Bearer {DEMO_API_KEY}"

  curl {url}/v1/chat/completions -H "Authorization: Bearer {DEMO_API_KEY}" \\
       -H "Content-Type: application/json" \\
       -d '{{"model": "mixtral", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  curl -N {url}/v1/chat/completions -H "Authorization: Bearer {DEMO_API_KEY}" \\
       -H "Content-Type: application/json" \\
       -d '{{"model": "phi-3-mini", "stream": true,
            "messages": [{{"role": "user", "content": "Hi"}}]}}'

  # Deterministic requests are cached: run this twice, the second says x-citadel-cache: hit
  curl -si {url}/v1/chat/completions -H "Authorization: Bearer {DEMO_API_KEY}" \
       -H "Content-Type: application/json" \
       -d '{{"model": "phi-3-mini", "temperature": 0,
            "messages": [{{"role": "user", "content": "Hi"}}]}}' | grep -i x-citadel-cache

  curl {url}/admin/actors -H "Authorization: Bearer {DEMO_ADMIN_KEY}"
  curl {url}/metrics

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="{DEMO_API_KEY}")
  reply = client.chat.completions.create(
      model="hermes-2-pro", messages=[{{"role": "user", "content": "Hello"}}])
  print(reply.choices[0].message.content)
  PY
"""


async def run_demo(listen: str = "127.0.0.1:8000") -> int:
    state = Path(tempfile.mkdtemp(prefix="citadel-demo-"))
    config = demo_config(listen, state)
    mocks: list[RunningServer] = []
    gateway: RunningServer | None = None
    try:
        for model in config.models:
            for backend in model.backends:
                host_port = backend.url.removeprefix("http://")
                host, _, port = host_port.rpartition(":")
                settings = MockSettings(
                    model=backend.model or model.name, ttft=0.05, tokens_per_s=40, length=24
                )
                mocks.append(await start_server(create_mock_app(settings), host, int(port)))
                log.info("mock_service_started", model=model.name, url=backend.url)
        gateway = await start_gateway(config)
        print(usage_text(gateway.url, state), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        if gateway is not None:
            await gateway.close()
        for mock in reversed(mocks):
            await mock.close()
        log.info("demo_stopped")
