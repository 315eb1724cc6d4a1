"""The compose file's `monitoring` profile, as docker-compose renders it with .env.example,
and Grafana's refusal of a missing or placeholder admin password (deploy/grafana).

docker-compose is installed by the test command; rendering needs no Docker daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REFUSE_PLACEHOLDER = ROOT / "deploy" / "grafana" / "refuse-placeholder.sh"
MONITORING = {"prometheus", "grafana"}
GRAFANA_DASHBOARD = "/etc/grafana/dashboards/jobpub.json"


def rendered(*profile: str, env_file: Path = ROOT / ".env.example") -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: scripts/test.sh installs it"
    environment = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    result = subprocess.run(
        [binary, "--env-file", str(env_file), *profile, "config"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


@pytest.fixture(scope="module")
def monitoring() -> dict[str, Any]:
    return rendered("--profile", "monitoring")


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    published: str
    target: str


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


# docker-compose 1.x renders ports and volumes in the short syntax, Compose 2 in the long.
def published_ports(service: dict[str, Any]) -> list[PublishedPort]:
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            host_ip, published, target = port.split("/")[0].rsplit(":", 2)
            ports.append(PublishedPort(host_ip, published, target))
        else:
            ports.append(
                PublishedPort(port.get("host_ip", ""), str(port["published"]), str(port["target"]))
            )
    return ports


def bind_mounts(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, mode = [*volume.split(":"), "rw"][:3]
            if source.startswith("/"):
                mounts.append(Mount(source, target, mode == "ro"))
        elif volume["type"] == "bind":
            mounts.append(Mount(volume["source"], volume["target"], bool(volume.get("read_only"))))
    return mounts


def test_the_profile_adds_prometheus_and_grafana_to_the_stack(
    monitoring: dict[str, Any],
) -> None:
    services = monitoring["services"]
    assert MONITORING | {"postgres", "mosquitto", "migrate", "publisher"} <= set(services)
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"]


def test_an_env_file_from_before_the_profile_still_starts_the_stack(tmp_path: Path) -> None:
    # The Grafana password is checked when Grafana starts, not when compose reads the file.
    lines = (ROOT / ".env.example").read_text().splitlines(keepends=True)
    older = [line for line in lines if not line.startswith("GRAFANA_ADMIN_PASSWORD=")]
    assert len(older) == len(lines) - 1
    env_file = tmp_path / ".env"
    env_file.write_text("".join(older))
    assert {"publisher", "grafana"} <= set(rendered(env_file=env_file)["services"])


def test_the_images_are_pinned_by_tag(monitoring: dict[str, Any]) -> None:
    for name in MONITORING:
        image = monitoring["services"][name]["image"]
        _, _, tag = image.rpartition(":")
        assert "/" not in tag, f"{image} has no tag"
        assert tag != "latest", image
        assert any(c.isdigit() for c in tag), f"{image}: a version, not a moving name"


def test_every_port_is_published_on_localhost_only(monitoring: dict[str, Any]) -> None:
    services = monitoring["services"]
    assert published_ports(services["prometheus"]) == [PublishedPort("127.0.0.1", "9090", "9090")]
    assert published_ports(services["grafana"]) == [PublishedPort("127.0.0.1", "3000", "3000")]


def test_the_mounted_deploy_files_exist_and_are_read_only(monitoring: dict[str, Any]) -> None:
    mounts = {
        (name, mount.target): mount
        for name in MONITORING
        for mount in bind_mounts(monitoring["services"][name])
    }
    expected = {
        ("prometheus", "/etc/prometheus/prometheus.yml"): "deploy/prometheus/prometheus.yml",
        ("prometheus", "/etc/prometheus/alerts.yml"): "deploy/prometheus/alerts.yml",
        ("grafana", GRAFANA_DASHBOARD): "deploy/grafana/jobpub.json",
        ("grafana", "/etc/grafana/provisioning/datasources"):
            "deploy/grafana/provisioning/datasources",
        ("grafana", "/etc/grafana/provisioning/dashboards"):
            "deploy/grafana/provisioning/dashboards",
        ("grafana", "/deploy/refuse-placeholder.sh"): "deploy/grafana/refuse-placeholder.sh",
    }  # fmt: skip
    assert set(mounts) == set(expected)
    for key, source in expected.items():
        assert Path(mounts[key].source) == ROOT / source
        assert (ROOT / source).exists()
        assert mounts[key].read_only, key


def test_grafana_finds_its_dashboard_and_prometheus_where_compose_puts_them(
    monitoring: dict[str, Any],
) -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "jobpub.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == str(Path(GRAFANA_DASHBOARD).parent)
    grafana = monitoring["services"]["grafana"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == GRAFANA_DASHBOARD
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (prometheus_port,) = published_ports(monitoring["services"]["prometheus"])
    assert datasource["url"] == f"http://prometheus:{prometheus_port.target}"


def test_grafana_gets_its_password_from_env_through_the_refusal_script(
    monitoring: dict[str, Any],
) -> None:
    grafana = monitoring["services"]["grafana"]
    assert grafana["entrypoint"][:2] == ["sh", "/deploy/refuse-placeholder.sh"]
    # .env.example's placeholder reaches the container, where the script refuses it.
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("change-me")


def run_refusal(password: str | None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "GF_SECURITY_ADMIN_PASSWORD"}
    if password is not None:
        environment["GF_SECURITY_ADMIN_PASSWORD"] = password
    return subprocess.run(
        ["sh", str(REFUSE_PLACEHOLDER), "echo", "grafana started"],
        env=environment, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("password", [None, "", "change-me-grafana", "change-me"])
def test_grafana_refuses_a_missing_or_placeholder_password(password: str | None) -> None:
    result = run_refusal(password)
    assert result.returncode != 0
    assert "grafana started" not in result.stdout
    assert "GRAFANA_ADMIN_PASSWORD: set a password of your own in .env" in result.stderr


def test_grafana_starts_with_a_password_of_its_own() -> None:
    result = run_refusal("a-password of 'my' own")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "grafana started\n"
