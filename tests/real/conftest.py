"""The real-server tier: every test here runs against real model servers (started by
ops.real_servers.processes) and is marked `real`; `make test` leaves it out, `make test-real`
(and CI) runs it. When the servers are not installed, every test here fails saying how to
install them: never a skip."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.auth.keys import hash_secret
from gateway.process.config import GatewayConfig
from gateway.process.server import RunningServer, start_gateway
from ops.real_servers.processes import CONTEXT, SERVED_NAME, Installed, RealServer, start

SECRET = "r" * 43
KEY = f"sk-citadel-0000000000aa-{SECRET}"
LIMITED_KEY = f"sk-citadel-0000000000bb-{SECRET}"  # rpm 2
ADMIN = "sk-real-admin-0123456789"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.real)


@dataclass
class Fleet:
    """Two replicas of each server kind, shared by the tier's tests."""

    python: list[RealServer]
    cpp: list[RealServer]
    installed: Installed
    log_dir: Path


@pytest.fixture(scope="session")
def installed() -> Installed:
    try:
        return Installed.find()
    except RuntimeError as missing:
        pytest.fail(str(missing), pytrace=False)


@pytest.fixture(scope="session")
def fleet(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    log_dir = tmp_path_factory.mktemp("real-servers")
    started: list[RealServer] = []
    try:
        for index in range(2):
            started.append(start(installed, "llama-cpp-python", log_dir, f"py{index}"))
            started.append(start(installed, "llama-cpp", log_dir, f"cpp{index}"))
        yield Fleet(
            [s for s in started if s.kind == "llama-cpp-python"],
            [s for s in started if s.kind == "llama-cpp"],
            installed,
            log_dir,
        )
    finally:
        for server in started:
            server.stop()


def model(name: str, servers: list[RealServer], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "context_window": CONTEXT,
        "backends": [
            {"url": s.url, "kind": s.kind, "model": SERVED_NAME, "health": {"interval": 1.0}}
            for s in servers
        ],
        **extra,
    }


def gateway_config(models: list[dict[str, Any]], tmp_path: Path, **extra: Any) -> GatewayConfig:
    keys = [
        {"id": "0000000000aa", "secret_sha256": hash_secret(SECRET)},
        {"id": "0000000000bb", "secret_sha256": hash_secret(SECRET), "scopes": {"rpm": 2}},
    ]
    return GatewayConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "models": models,
            "virtual_models": [{"name": "auto", "candidates": [m["name"] for m in models]}],
            "auth": {"keys": keys, "admin_keys": [ADMIN]},
            "usage": {"path": str(tmp_path / "usage.db"), "flush_interval": 0.05},
            "logging": {"access_log": False},
            **extra,
        }
    )


@pytest.fixture
async def gateway(fleet: Fleet, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The gateway in front of the shared fleet: smol-py (llama-cpp-python) and smol-cpp
    (llama-server), two replicas each, and `auto` over both."""
    config = gateway_config(
        [model("smol-py", fleet.python), model("smol-cpp", fleet.cpp)], tmp_path
    )
    server = await start_gateway(config)
    try:
        yield server
    finally:
        await server.close()
