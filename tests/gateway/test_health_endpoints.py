"""/health/live and /health/ready: unauthenticated, and readiness follows the replicas."""

from __future__ import annotations

import asyncio

from actors.backend.probe import HealthSettings
from gateway.mock.faults import Fault
from tests.gateway.harness import ModelPlan, bounded_client, deployment

PROBES = HealthSettings(interval=0.02, jitter=0.1, healthy_threshold=1, unhealthy_threshold=1)


async def test_live_and_ready_answer_without_a_key() -> None:
    plans = [ModelPlan("a"), ModelPlan("b", replicas=2)]
    async with deployment(plans) as gw, bounded_client() as http:
        async with http.get(gw.url + "/health/live") as live:
            assert live.status == 200
            assert await live.json() == {"status": "live"}
        async with http.get(gw.url + "/health/ready") as ready:
            assert ready.status == 200
            assert await ready.json() == {
                "status": "ready",
                "models": {
                    "a": {"usable_replicas": 1, "replicas": 1},
                    "b": {"usable_replicas": 2, "replicas": 2},
                },
            }


async def test_ready_flips_when_every_replica_of_a_model_is_down_and_back() -> None:
    async with deployment([ModelPlan("a", health=PROBES), ModelPlan("b")]) as gw:
        mock = gw.mocks["a"][0].state
        mock.set_fault(Fault(mode="unhealthy"))
        await asyncio.wait_for(mock.wait_health_checks(mock.health_checks + 2), timeout=5)
        async with bounded_client() as http:
            async with http.get(gw.url + "/health/ready") as ready:
                assert ready.status == 503
                body = await ready.json()
            assert body["status"] == "not_ready"
            assert body["reasons"] == ["model a has no usable replica"]
            mock.set_fault(Fault())
            await asyncio.wait_for(mock.wait_health_checks(mock.health_checks + 2), timeout=5)
            async with http.get(gw.url + "/health/ready") as again:
                assert again.status == 200
