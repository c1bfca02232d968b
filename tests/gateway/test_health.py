"""Active health probes take a replica out of rotation and back; panic mode when too few are
left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from actors.backend.actor import BackendStats, GetStats
from actors.backend.kinds import PROFILES
from actors.backend.probe import HealthSettings, parse_queue
from actors.router.actor import RoutingSettings
from actors.router.balancer import Policy
from gateway.mock.faults import Fault
from tests.gateway.harness import API_KEY, Deployment, ModelPlan, bounded_client, deployment

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FAST_PROBES = HealthSettings(
    interval=0.02, jitter=0.1, timeout=1.0, healthy_threshold=2, unhealthy_threshold=2
)


async def stats(gw: Deployment, index: int) -> BackendStats:
    result: BackendStats = await gw.state.system.lookup(f"root/backends/m#{index}").ask(GetStats())
    return result


async def probed(gw: Deployment, index: int, times: int) -> None:
    """Wait until replica `index` has answered `times` more probes, and the gateway has heard
    all but possibly the last (the probe task sends the next only after reporting one)."""
    mock = gw.mocks["m"][index].state
    await asyncio.wait_for(mock.wait_health_checks(mock.health_checks + times + 1), timeout=5)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with bounded_client() as session:
        yield session


async def chat(http: aiohttp.ClientSession, gw: Deployment) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        await response.read()
        return response.status


async def test_an_unhealthy_replica_gets_no_traffic_until_it_recovers(
    http: aiohttp.ClientSession,
) -> None:
    plan = ModelPlan("m", replicas=3, health=FAST_PROBES)
    async with deployment([plan]) as gw:
        sick = gw.mocks["m"][0].state
        sick.set_fault(Fault(mode="unhealthy"))
        await probed(gw, 0, FAST_PROBES.unhealthy_threshold)
        assert not (await stats(gw, 0)).healthy
        before = sick.stats.requests
        assert [await chat(http, gw) for _ in range(12)] == [200] * 12
        assert sick.stats.requests == before  # out of rotation
        sick.set_fault(Fault())
        await probed(gw, 0, FAST_PROBES.healthy_threshold)
        assert (await stats(gw, 0)).healthy


async def test_panic_mode_spreads_over_all_replicas_when_too_few_are_healthy(
    http: aiohttp.ClientSession,
) -> None:
    round_robin = RoutingSettings(policy=Policy.WEIGHTED_ROUND_ROBIN)
    plan = ModelPlan("m", replicas=2, health=FAST_PROBES, routing=round_robin)
    async with deployment([plan]) as gw:
        for index, mock in enumerate(gw.mocks["m"]):
            mock.state.set_fault(Fault(mode="unhealthy"))  # health fails; serving still works
            await probed(gw, index, FAST_PROBES.unhealthy_threshold)
        assert not (await stats(gw, 0)).healthy
        assert not (await stats(gw, 1)).healthy
        # Refusing everything would be worse than trying: requests go out and succeed.
        assert [await chat(http, gw) for _ in range(10)] == [200] * 10
        assert all(mock.state.stats.requests > 0 for mock in gw.mocks["m"])


def _parse(kind: str, text: bytes) -> tuple[float | None, float | None]:
    profile = PROFILES[kind]
    pattern = profile.queue_pattern()
    assert pattern is not None
    return parse_queue(text, pattern, profile.waiting_metric)


def test_queue_metrics_are_read_from_vllm_metrics() -> None:
    text = (
        b"# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        b'vllm:num_requests_waiting{model_name="a"} 3.0\n'
        b'vllm:num_requests_running{model_name="a"} 7\n'
        b"vllm:num_requests_waiting 1\n"
    )
    assert _parse("vllm", text) == (4.0, 7.0)
    assert _parse("vllm", b"nothing here") == (None, None)


def test_queue_metrics_are_read_from_llama_server_metrics() -> None:
    """llama-server's --metrics names its queue requests_deferred (as a real one prints)."""
    text = (
        b"# TYPE llamacpp:requests_processing gauge\n"
        b"llamacpp:requests_processing 2\n"
        b"llamacpp:requests_deferred 5\n"
        b"llamacpp:n_decode_total 40\n"
    )
    assert _parse("llama-cpp", text) == (5.0, 2.0)


async def test_probe_reads_the_queue_into_the_replica_cost(http: aiohttp.ClientSession) -> None:
    probes = FAST_PROBES.model_copy(update={"metrics_path": "/metrics"})
    plan = ModelPlan("m", replicas=2, health=probes)
    async with deployment([plan]) as gw:
        busy = gw.mocks["m"][0].state
        busy.reported_waiting = 50  # its own queue is long, though the gateway sent nothing
        await probed(gw, 0, 1)
        assert (await stats(gw, 0)).queued == 50
        for _ in range(10):
            assert await chat(http, gw) == 200
        assert busy.stats.requests == 0  # p2c always preferred the replica with no queue
