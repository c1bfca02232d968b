"""The files in ops/ refer to what the gateway really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from actors.kernel import ActorRef, ActorSystem, ChildSpec, Supervisor
from gateway.http.metrics import GatewayMetrics

OPS = Path(__file__).resolve().parents[1] / "ops"
METRIC_NAME = re.compile(r"\b(citadel_[a-z_]+)")


async def exported_names() -> set[str]:
    system = ActorSystem()
    root: ActorRef = await system.spawn(ChildSpec("root", lambda: Supervisor([])))
    try:
        registry = GatewayMetrics(root).registry
        names = set()
        for family in registry.collect():
            names.add(family.name)
            for sample in family.samples:
                names.add(sample.name)
        return names
    finally:
        await system.shutdown()


def referenced(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


async def test_alert_rules_and_dashboard_use_exported_metrics() -> None:
    exported = await exported_names()
    rules = yaml.safe_load((OPS / "prometheus" / "citadel-alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(expressions) >= 6
    dashboard = json.loads((OPS / "grafana" / "citadel-gateway.json").read_text())
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for expression in expressions:
        for name in referenced(expression):
            base = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert name in exported or base in exported, f"{name} is not exported"


def test_scrape_config_loads_the_alert_rules() -> None:
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["citadel-alerts.yml"]
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"
