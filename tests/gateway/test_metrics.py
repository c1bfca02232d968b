"""Prometheus metrics after scripted traffic: names, labels, values, and where they are served."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from actors.backend.breaker import BreakerSettings
from actors.router.actor import RetryBudgetSettings, RoutingSettings
from gateway.http.app import METRICS_PORT
from gateway.mock.faults import Fault
from gateway.process.config import MetricsSettings
from tests.gateway.harness import API_KEY, Deployment, ModelPlan, bounded_client, deployment

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(gw: Deployment) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with bounded_client() as http, http.get(gw.url + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return samples(await response.text())


async def test_metrics_count_requests_streams_retries_and_backends() -> None:
    routing = RoutingSettings(retry_budget=RetryBudgetSettings(min_retries=5))
    plans = [ModelPlan("m", replicas=2, routing=routing, aliases=("alias",))]
    async with deployment(plans) as gw, bounded_client() as http:
        chat = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for _ in range(3):
            async with http.post(gw.url + "/v1/chat/completions", json=chat, headers=AUTH) as r:
                assert r.status == 200
        stream = {**chat, "stream": True}
        async with http.post(gw.url + "/v1/chat/completions", json=stream, headers=AUTH) as r:
            await r.read()
        gw.mocks["m"][0].state.set_fault(Fault(mode="error", status=500))
        gw.mocks["m"][1].state.set_fault(Fault(mode="error", status=500))
        async with http.post(gw.url + "/v1/chat/completions", json=chat, headers=AUTH) as r:
            assert r.status == 502
        async with http.post(gw.url + "/v1/chat/completions", json=chat) as r:
            assert r.status == 401
        metrics = await scrape(gw)

    endpoint = "/v1/chat/completions"
    ok = sum(
        value
        for (name, labels), value in metrics.items()
        if name == "citadel_requests_total"
        and dict(labels)["status"] == "2xx"
        and dict(labels)["endpoint"] == endpoint
        and dict(labels)["model"] == "m"
    )
    assert ok == 4  # served model "m", not the alias the client sent
    failed = [
        value
        for (name, labels), value in metrics.items()
        if name == "citadel_requests_total" and dict(labels)["status"] == "5xx"
    ]
    assert failed == [1.0]
    assert metrics[("citadel_retries_total", (("model", "m"),))] == 1.0
    # Three answers and one stream: the gateway asks for the stream's usage report even
    # though the client did not, so four usages of 2 completion tokens each.
    tokens = (("key", "static-0"), ("kind", "completion"), ("model", "m"), ("source", "reported"))
    assert metrics[("citadel_tokens_total", tokens)] == 8.0
    assert metrics[("citadel_auth_failures_total", ())] == 1.0
    assert metrics[("citadel_time_to_first_token_seconds_count", (("model", "m"),))] == 1.0
    assert (
        metrics[
            ("citadel_request_duration_seconds_count", (("endpoint", endpoint), ("model", "m")))
        ]
        == 5.0
    )
    overhead_count = metrics[("citadel_gateway_overhead_seconds_count", (("endpoint", endpoint),))]
    assert overhead_count == 5.0
    assert metrics[("citadel_backend_in_flight", (("backend", "m#0"),))] == 0.0
    assert metrics[("citadel_backend_healthy", (("backend", "m#1"),))] == 1.0
    assert ("citadel_backend_circuit_state", (("backend", "m#0"),)) in metrics
    assert metrics[("citadel_actor_running", (("actor", "root/router"),))] == 1.0
    assert metrics[("citadel_actor_restarts", (("actor", "root/backends/m#0"),))] == 0.0
    for _, labels in metrics:  # bounded labels: no request ids, no user input
        assert all(key != "request_id" for key, _ in labels)


async def test_metrics_on_the_api_port_only_for_allowed_networks() -> None:
    settings = MetricsSettings(allow=("10.0.0.0/8",))
    async with (
        deployment([ModelPlan("m")], metrics=settings) as gw,
        bounded_client() as http,
        http.get(gw.url + "/metrics") as response,
    ):
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "unknown_url"


async def test_metrics_on_a_separate_port() -> None:
    settings = MetricsSettings(on_main_port=False, listen="127.0.0.1:0")
    async with deployment([ModelPlan("m")], metrics=settings) as gw:
        port = gw.gateway.runner.app[METRICS_PORT]
        async with bounded_client() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert "citadel_backend_in_flight" in await response.text()
            async with http.get(gw.url + "/metrics") as main:
                assert main.status == 404


async def test_the_circuit_gauge_follows_the_ejection_without_traffic() -> None:
    breaker = BreakerSettings(consecutive_failures=1, ejection=0.2)
    async with deployment([ModelPlan("m", breaker=breaker)]) as gw, bounded_client() as http:
        gw.mocks["m"][0].state.set_fault(Fault(mode="error", status=500, count=1))
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(gw.url + "/v1/chat/completions", json=chat, headers=AUTH) as r:
            assert r.status == 502
        gauge = ("citadel_backend_circuit_state", (("backend", "m#0"),))
        assert (await scrape(gw))[gauge] == 2.0  # open
        await asyncio.sleep(0.25)  # the ejection's own clock, with no request to move it
        assert (await scrape(gw))[gauge] == 1.0  # half-open: ready for a trial
