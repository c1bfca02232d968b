"""The admin API: the live actor tree (JSON and HTML), replicas, and operator restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.backend.actor import GetStats
from tests.gateway.harness import (
    ADMIN_KEY,
    API_KEY,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def gw() -> AsyncIterator[Deployment]:
    async with deployment([ModelPlan("m", replicas=2)]) as running:
        yield running


def find(tree: list[dict[str, Any]], path: str) -> dict[str, Any]:
    for node in tree:
        if node["path"] == path:
            return node
        try:
            return find(node["children"], path)
        except LookupError:
            continue
    raise LookupError(path)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": f"Bearer {API_KEY}"}, 403),
        ({"Authorization": "Bearer x"}, 401),
    ],
)
async def test_admin_needs_an_admin_key(
    gw: Deployment, headers: dict[str, str], status: int
) -> None:
    async with bounded_client() as http:
        for method, path in [("GET", "/admin/actors"), ("GET", "/admin/backends"),
                             ("POST", "/admin/actors/root/router/restart")]:  # fmt: skip
            async with http.request(method, gw.url + path, headers=headers) as response:
                assert response.status == status
                assert set((await response.json())["error"]) == {"message", "type", "param", "code"}


async def test_admin_key_is_no_model_key(gw: Deployment) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        bounded_client() as http,
        http.post(gw.url + "/v1/chat/completions", json=body, headers=ADMIN) as response,
    ):
        assert response.status == 401


async def test_actor_tree_reflects_a_crash_and_an_operator_restart(gw: Deployment) -> None:
    backend = gw.state.system.lookup("root/backends/m#0")
    await backend.tell(object())  # an unhandled tell: the actor crashes and is restarted
    await backend.ask(GetStats())  # served by the restarted instance
    async with bounded_client() as http:
        async with http.get(gw.url + "/admin/actors", headers=ADMIN) as response:
            tree = (await response.json())["actors"]
        node = find(tree, "root/backends/m#0")
        assert node["state"] == "running"
        assert node["restarts"] == 1
        assert node["last_failure"]["type"] == "UnhandledMessage"
        assert node["details"]["circuit"] == "closed"
        assert find(tree, "root/router")["class"] == "RouterActor"

        async with http.post(
            gw.url + "/admin/actors/root/backends/m%231/restart", headers=ADMIN
        ) as restarted:
            assert restarted.status == 200
            assert (await restarted.json())["actor"]["restarts"] == 1
        async with http.post(gw.url + "/admin/actors/root/nope/restart", headers=ADMIN) as r:
            assert r.status == 404
        async with http.post(gw.url + "/admin/actors/root/restart", headers=ADMIN) as r:
            assert r.status == 400


async def test_actor_tree_as_html_for_a_browser(gw: Deployment) -> None:
    headers = {**ADMIN, "Accept": "text/html,application/xhtml+xml"}
    async with (
        bounded_client() as http,
        http.get(gw.url + "/admin/actors", headers=headers) as response,
    ):
        assert response.content_type == "text/html"
        page = await response.text()
    assert "<table>" in page
    assert "m#0" in page
    assert "RouterActor" in page


async def test_backends_lists_every_replica(gw: Deployment) -> None:
    async with (
        bounded_client() as http,
        http.get(gw.url + "/admin/backends", headers=ADMIN) as response,
    ):
        replicas = (await response.json())["backends"]
    assert [r["name"] for r in replicas] == ["m#0", "m#1"]
    assert {"healthy", "circuit", "in_flight", "latency_s", "url"} <= set(replicas[0])


def test_the_configuration_shown_has_no_secret() -> None:
    from gateway.http.admin_config import REDACTED, redacted

    shown = redacted(
        {
            "auth": {"api_keys": ["sk-a", "sk-b"], "admin_keys": [], "key_store": None},
            "usage": {"path": "postgresql://citadel:hunter2@db.internal/citadel"},
            "limits": {"redis_url": "redis://:s3cret@redis:6379/0"},
            "tracing": {"headers": {"x-api-key": "k"}},
            "models": [{"backends": [{"url": "http://m:8000", "api_key": "tok"}]}],
            "note": "ada@example.com",
        }
    )
    assert shown["auth"] == {"api_keys": [REDACTED, REDACTED], "admin_keys": [], "key_store": None}
    assert shown["usage"]["path"] == f"postgresql://citadel:{REDACTED}@db.internal/citadel"
    assert shown["limits"]["redis_url"] == f"redis://:{REDACTED}@redis:6379/0"
    assert shown["tracing"]["headers"] == {"x-api-key": REDACTED}
    assert shown["models"][0]["backends"][0] == {"url": "http://m:8000", "api_key": REDACTED}
    assert shown["note"] == "ada@example.com"  # no URL: left alone
