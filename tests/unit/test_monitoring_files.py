"""deploy/grafana and deploy/prometheus agree with jobpub's metrics and with the compose file.

Queries are read loosely, as text: every `jobpub_…` name in a dashboard or alert expression
must be a series jobpub exposes, so renaming a metric breaks this test, not a dashboard in
production. The PromQL itself is checked by promtool (tests/integration/test_prometheus_rules.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobpub.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "jobpub.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"

# What the dashboard promises (docs/monitoring.md describes each panel).
REQUIRED_PANELS = {
    "Throughput",
    "Publish lag quantiles",
    "Backlog",
    "Claim duration",
    "Publish duration",
    "Commit duration",
    "Failures by reason",
    "Replicas up",
    "Broker and database up",
    "Delivery probe",
}
REQUIRED_ALERTS = {
    "JobpubNoReadyReplica",
    "JobpubDatabaseDown",
    "JobpubBrokerDown",
    "JobpubDueBacklogGrowing",
    "JobpubPublishLagHigh",
    "JobpubDeadJobsIncreasing",
    "JobpubProbesMissing",
    "JobpubProbeNoSubscriber",
    "JobpubProbesNotReceived",
}
DATASOURCE = "${datasource}"

_METRIC_NAME = re.compile(r"\bjobpub_[a-z_]+")
# The series each metric type puts in the text format (_created is never worth a query).
_SERIES_SUFFIXES = {
    "counter": ["_total"],
    "gauge": [""],
    "histogram": ["_bucket", "_sum", "_count"],
}


def exposed_series_names() -> set[str]:
    """Every series name a replica's /metrics can carry, labelled families included."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in _SERIES_SUFFIXES[family.type])
    return names


def referenced_metric_names(expressions: list[str]) -> set[str]:
    return {name for expression in expressions for name in _METRIC_NAME.findall(expression)}


def unknown_metric_names(expressions: list[str]) -> set[str]:
    return referenced_metric_names(expressions) - exposed_series_names()


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries + variables


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_metric_the_dashboard_queries_is_one_jobpub_exposes(
    dashboard: dict[str, Any],
) -> None:
    expressions = dashboard_expressions(dashboard)
    assert len(referenced_metric_names(expressions)) >= 14
    assert unknown_metric_names(expressions) == set()


def test_every_metric_the_alerts_query_is_one_jobpub_exposes() -> None:
    expressions = [rule["expr"] for rule in alert_rules()]
    assert len(referenced_metric_names(expressions)) >= 5
    assert unknown_metric_names(expressions) == set()


@pytest.mark.parametrize(
    ("expression", "unknown"),
    [
        ("rate(jobpub_jobs_publishd_total[5m])", {"jobpub_jobs_publishd_total"}),
        # A counter is only ever exposed with _total, a histogram never bare.
        ("rate(jobpub_jobs_published[5m])", {"jobpub_jobs_published"}),
        ("jobpub_publish_lag_seconds > 1", {"jobpub_publish_lag_seconds"}),
        ('sum by (reason) (jobpub_publish_failures_total{job="x"})', set()),
        ("histogram_quantile(0.9, rate(jobpub_claim_duration_seconds_bucket[1m]))", set()),
    ],
)
def test_the_metric_name_check_catches_a_name_jobpub_does_not_expose(
    expression: str, unknown: set[str]
) -> None:
    assert unknown_metric_names([expression]) == unknown


def test_the_dashboard_has_a_panel_for_each_subject(dashboard: dict[str, Any]) -> None:
    titles = [panel["title"] for panel in panels(dashboard)]
    assert set(titles) >= REQUIRED_PANELS
    assert len(titles) == len(set(titles)), "two panels share a title"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "two panels share an id"


def test_every_query_goes_to_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["datasource"]["uid"] == DATASOURCE
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            assert 'job="$job"' in target["expr"], f"{panel['title']}: {target['expr']}"


def test_no_two_panels_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_every_alert_is_there_with_a_severity_summary_and_runbook() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == REQUIRED_ALERTS
    guide = (ROOT / "docs" / "monitoring.md").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        anchor = rule["annotations"]["runbook"].removeprefix("docs/monitoring.md#")
        assert f"\n### {rule['alert']}\n" in guide, f"no section for {rule['alert']}"
        assert anchor == rule["alert"].lower()


def test_prometheus_scrapes_the_compose_publishers_where_they_serve_metrics() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    publisher_port = int(compose["services"]["publisher"]["environment"]["JOBPUB_HTTP_PORT"])
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["publisher"]
    assert discovery["port"] == publisher_port
    assert "publisher" in compose["services"]
    assert config["rule_files"] == [ALERTS.name]
