"""deploy/prometheus checked by promtool: the config, the rules, and the rules' unit tests.

promtool comes with Debian's `prometheus` package, which the test command installs.
alerts_test.yml holds, for each alert, series that fire it and series that must not; the
tests here show that each alert's firing case would catch an alert that never fires, and
that the dashboard's queries parse as PromQL too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_monitoring_files import DASHBOARD, REQUIRED_ALERTS, dashboard_expressions

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
NEVER_FIRES = "vector(1) == 0"  # an empty result: the alert cannot fire


def promtool(
    *arguments: str | Path, cwd: Path = PROMETHEUS_DIR
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/test.sh installs Debian's prometheus package"
    return subprocess.run(
        [binary, *map(str, arguments)], cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_the_prometheus_config_and_its_rule_file_are_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout  # the rule file was found and checked with it


def test_the_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(REQUIRED_ALERTS)} rules found" in result.stdout


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_has_series_that_fire_it_and_series_that_must_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == REQUIRED_ALERTS
    assert quiet == REQUIRED_ALERTS


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_the_unit_tests_fail_when_an_alert_never_fires(tmp_path: Path, alert: str) -> None:
    rules: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    rule["expr"] = NEVER_FIRES
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(RULES_TESTS, tmp_path)
    result = promtool("test", "rules", RULES_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert f"alertname: {alert}," in result.stdout + result.stderr


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions in rule files, so each query becomes a recording rule,
    # with Grafana's variables given values.
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [
        e.replace("$__rate_interval", "1m").replace("$job", "jobpub")
        for e in dashboard_expressions(dashboard)
        if not e.startswith("label_values(")  # a Grafana function, not PromQL
    ]
    rules = [{"record": f"dashboard:query_{n}", "expr": e} for n, e in enumerate(expressions)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout
