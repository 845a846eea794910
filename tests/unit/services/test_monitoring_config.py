"""docker/: Prometheus scrapes every service where compose serves /metrics, and the Grafana
dashboard asks only for metric names the runtime exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from services.metrics import ServiceMetrics, prometheus_registry

DOCKER = Path(__file__).resolve().parents[3] / "docker"


def test_prometheus_scrapes_every_service_on_the_compose_port() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    port = compose["x-service-env"]["FEDMOE_METRICS_PORT"]
    assert {"prometheus", "grafana"} <= set(compose["services"])
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", ())
               for t in sc["targets"]}  # fmt: skip
    for service in ("gateway", "profiler", "load-monitor", "matcher", "evaluator"):
        assert f"{service}:{port}" in targets
    dns = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", ())]
    assert dns == [{"names": ["aggregator"], "type": "A", "port": int(port)}]


def test_dashboard_queries_exported_names() -> None:
    exported = {
        s.name
        for family in prometheus_registry(ServiceMetrics("x")).collect()
        for s in family.samples
    } | {"fedmoe_verdicts_total", "fedmoe_dead_letters_total", "fedmoe_round_opened",
         "fedmoe_round_closed", "fedmoe_load_cv", "fedmoe_produced_messages_total",
         "fedmoe_consumer_lag"}  # fmt: skip  # labelled families with no sample yet
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "fedmoe.json").read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b((?:fedmoe|process)_[a-z_]+)", target["expr"]):
                assert name in exported, (panel["title"], name)
