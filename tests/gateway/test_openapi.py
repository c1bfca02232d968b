"""The OpenAPI document: in step with the routes the app serves, and a schemathesis run
against a live gateway from it (bounded examples) finding no 5xx, no non-JSON error and no
answer outside the document."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.http.openapi import document
from gateway.process.config import GatewayConfig
from ops.bench.run import free_port, wait_listening
from tests.gateway.harness import ADMIN_KEY, API_KEY, ModelPlan, deployment

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_every_route_is_in_the_document_and_nothing_else() -> None:
    async with deployment([ModelPlan("m")]) as gw:
        served = set()
        for route in gw.gateway.runner.app.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("formatter", "")
            path = path.replace("{path:.+}", "{path}").replace("{model:.+}", "{model}")
            if route.method != "HEAD":
                served.add((route.method.lower(), path))
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert served == documented


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway process in front of a mock service, with a key store to manage."""
    work = tmp_path_factory.mktemp("openapi")
    upstream_port, port = free_port(), free_port()
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "auth": {"api_keys": [API_KEY], "admin_keys": [ADMIN_KEY], "key_store": str(work / "k.db")},
        "usage": {"path": str(work / "usage.db")},
        "logging": {"access_log": False, "level": "warning"},
        "models": [{"name": "m", "backends": [{"url": f"http://127.0.0.1:{upstream_port}"}]}],
    }
    GatewayConfig.model_validate(config)
    path = Path(work / "gateway.yaml")
    path.write_text(json.dumps(config))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "mock-backend", "--port", str(upstream_port),
             "--model", "m"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        wait_listening(upstream_port, processes[0])
        wait_listening(port, processes[1])
        yield f"http://127.0.0.1:{port}"
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def openapi_schema(live_gateway: str) -> Any:
    with urllib.request.urlopen(live_gateway + "/openapi.json", timeout=10) as response:
        served = json.loads(response.read())
    assert served == json.loads(json.dumps(document()))
    schema = schemathesis.openapi.from_dict(served)
    schema.config.update(base_url=live_gateway)
    return schema


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def checker(operation: Any, headers: dict[str, str], calls: dict[str, int]) -> Any:
    """A hypothesis test of one operation: 8 generated requests, each answer checked."""

    @given(case=operation.as_strategy())
    @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        calls[operation.label] = calls.get(operation.label, 0) + 1
        case.call_and_validate(headers=headers, timeout=30, checks=CHECKS)

    return check


def test_the_live_gateway_answers_as_its_document_says(openapi_schema: Any) -> None:
    """Every operation, with bodies and parameters generated from the document (schemathesis
    over hypothesis): no 5xx, and every answer as documented."""
    calls: dict[str, int] = {}
    for found in openapi_schema.get_all_operations():
        operation = found.ok()
        key = ADMIN_KEY if operation.path.startswith("/admin") else API_KEY
        checker(operation, {"Authorization": f"Bearer {key}"}, calls)()
    assert len(calls) == sum(len(ops) for ops in document()["paths"].values())
    assert sum(calls.values()) >= 2 * len(calls)  # more than one example each
