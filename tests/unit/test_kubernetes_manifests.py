"""deploy/kubernetes/base, rendered and checked offline; each check shown to catch a fault.

The checks live in tests/kubernetes/manifests.py. Every mutation below breaks one thing
in a copy of the rendered base, and the test asserts that the check meant for it says
so: a check that cannot fail would pass a broken manifest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.kubernetes import manifests
from tests.kubernetes.manifests import Manifest

Check = Callable[[list[Manifest]], list[str]]


def schemas(objects: list[Manifest]) -> list[str]:
    return [problem for manifest in objects for problem in manifests.schema_problems(manifest)]


@pytest.fixture(scope="module")
def rendered() -> list[Manifest]:
    return manifests.render()


def test_the_base_renders_every_object_it_promises(rendered: list[Manifest]) -> None:
    kinds = sorted(m["kind"] for m in rendered)
    assert kinds == sorted([
        "Deployment", "Job", "Service", "PodMonitor", "PodDisruptionBudget",
        "NetworkPolicy", "ScaledObject", "TriggerAuthentication",
    ])  # fmt: skip


def test_the_base_is_valid_and_keeps_every_rule(rendered: list[Manifest]) -> None:
    assert manifests.all_problems(rendered) == []


def test_the_kubernetes_schemas_are_the_pinned_version_and_offline() -> None:
    # kubernetes-validate reads the schemas it ships; the version must be among them.
    assert manifests.KUBERNETES_VERSION.rsplit(".", 1)[0] in manifests.supported_minor_versions()


def test_a_kustomization_with_more_than_resources_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [], "namePrefix": "x-"})
    )
    with pytest.raises(ValueError, match="resources-only"):
        manifests.render(tmp_path)


def _container(objects: list[Manifest], kind: str = "Deployment") -> Manifest:
    owner = next(m for m in objects if m["kind"] == kind)
    container: Manifest = owner["spec"]["template"]["spec"]["containers"][0]
    return container


def _pod(objects: list[Manifest], kind: str = "Deployment") -> Manifest:
    owner = next(m for m in objects if m["kind"] == kind)
    pod: Manifest = owner["spec"]["template"]["spec"]
    return pod


def _spec(objects: list[Manifest], kind: str) -> Manifest:
    spec: Manifest = next(m for m in objects if m["kind"] == kind)["spec"]
    return spec


def _misspell_probe(objects: list[Manifest]) -> None:
    container = _container(objects)
    container["readinessprobe"] = container.pop("readinessProbe")


def _postgresql_trigger(objects: list[Manifest]) -> Manifest:
    trigger: Manifest = _spec(objects, "ScaledObject")["triggers"][0]
    return trigger


def _set_query(query: str) -> Callable[[list[Manifest]], None]:
    def mutate(objects: list[Manifest]) -> None:
        _postgresql_trigger(objects)["metadata"]["query"] = query

    return mutate


def _add_secret(objects: list[Manifest]) -> None:
    objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "jobpub"},
                    "stringData": {"database-url": "postgresql://u:p@h/db"}})  # fmt: skip


MUTATIONS: dict[str, tuple[Callable[[list[Manifest]], None], Check]] = {
    # Kubernetes schemas (strict: unknown fields are errors)
    "misspelt field": (_misspell_probe, schemas),
    # (Only what a JSON schema can say: quantity syntax and port ranges are the API
    # server's own checks, which no offline schema carries.)
    "quantity not a scalar": (lambda o: _container(o)["resources"]["requests"].update(
        cpu=["250m"]), schemas),
    "port not a number": (lambda o: _container(o)["ports"][0].update(containerPort="http"),
                          schemas),
    "unknown kind": (lambda o: o[0].update(kind="Deploymentt"), schemas),
    # CRD schemas
    "ScaledObject without triggers": (lambda o: _spec(o, "ScaledObject").pop("triggers"),
                                      schemas),
    "ScaledObject misspelt field": (
        lambda o: _spec(o, "ScaledObject").update(minReplicas=_spec(o, "ScaledObject").pop(
            "minReplicaCount")), schemas),
    "trigger metadata not strings": (
        lambda o: _postgresql_trigger(o)["metadata"].update(targetQueryValue=5000), schemas),
    "TriggerAuthentication ref without key": (
        lambda o: _spec(o, "TriggerAuthentication")["secretTargetRef"][0].pop("key"), schemas),
    "PodMonitor bad interval": (
        lambda o: _spec(o, "PodMonitor")["podMetricsEndpoints"][0].update(
            interval="15 seconds"), schemas),
    "PodMonitor without selector": (lambda o: _spec(o, "PodMonitor").pop("selector"), schemas),
    # security
    "root user": (lambda o: _pod(o)["securityContext"].update(runAsUser=0),
                  manifests.security_problems),
    "runAsNonRoot dropped": (lambda o: _pod(o, "Job")["securityContext"].pop("runAsNonRoot"),
                             manifests.security_problems),
    "writable root": (lambda o: _container(o)["securityContext"].update(
        readOnlyRootFilesystem=False), manifests.security_problems),
    "privilege escalation": (lambda o: _container(o, "Job")["securityContext"].update(
        allowPrivilegeEscalation=True), manifests.security_problems),
    "capabilities kept": (lambda o: _container(o)["securityContext"].pop("capabilities"),
                          manifests.security_problems),
    "no seccomp": (lambda o: _pod(o)["securityContext"].pop("seccompProfile"),
                   manifests.security_problems),
    "no memory limit": (lambda o: _container(o)["resources"].pop("limits"),
                        manifests.security_problems),
    "no requests": (lambda o: _container(o)["resources"].pop("requests"),
                    manifests.security_problems),
    "password in the spec": (lambda o: _container(o)["env"].append(
        {"name": "JOBPUB_DATABASE_URL", "value": "postgresql://u:p@h/db"}),
        manifests.security_problems),
    # the publisher
    "no liveness probe": (lambda o: _container(o).pop("livenessProbe"),
                          manifests.publisher_problems),
    "readiness on /healthz": (lambda o: _container(o)["readinessProbe"]["httpGet"].update(
        path="/healthz"), manifests.publisher_problems),
    "port unnamed": (lambda o: _container(o)["ports"][0].pop("name"),
                     manifests.publisher_problems),
    "grace shorter than shutdown": (lambda o: _pod(o).update(terminationGracePeriodSeconds=20),
                                    manifests.publisher_problems),
    "fixed replicas": (lambda o: _spec(o, "Deployment").update(replicas=3),
                       manifests.publisher_problems),
    # autoscaling
    "unbounded backlog query": (_set_query(
        "SELECT count(*) FROM jobs WHERE NOT processed AND failed_at IS NULL "
        "AND fire_at <= now()"), manifests.autoscaling_problems),
    "query off the partial index": (_set_query(
        "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE NOT processed AND fire_at <= now() "
        "LIMIT 100000) AS due"), manifests.autoscaling_problems),
    "credentials in the trigger": (lambda o: _postgresql_trigger(o)["metadata"].update(
        connection="postgresql://u:p@h/db"), manifests.autoscaling_problems),
    "authentication not in the base": (lambda o: _postgresql_trigger(o)["authenticationRef"]
        .update(name="elsewhere"), manifests.autoscaling_problems),
    "scales something else": (lambda o: _spec(o, "ScaledObject")["scaleTargetRef"].update(
        name="other"), manifests.autoscaling_problems),
    # network
    "egress to any port": (lambda o: _spec(o, "NetworkPolicy")["egress"].append({}),
                           manifests.network_problems),
    "egress to the web": (lambda o: _spec(o, "NetworkPolicy")["egress"].append(
        {"ports": [{"port": 443, "protocol": "TCP"}]}), manifests.network_problems),
    "ingress from anywhere": (lambda o: _spec(o, "NetworkPolicy")["ingress"][0].pop("from"),
                              manifests.network_problems),
    "no egress policy": (lambda o: _spec(o, "NetworkPolicy").update(policyTypes=["Ingress"]),
                         manifests.network_problems),
    # secrets
    "a Secret in the base": (_add_secret, manifests.secret_problems),
}  # fmt: skip


@pytest.mark.parametrize("fault", MUTATIONS)
def test_each_check_catches_its_fault(rendered: list[Manifest], fault: str) -> None:
    mutate, check = MUTATIONS[fault]
    broken = copy.deepcopy(rendered)
    assert check(broken) == [], "the check must pass on the real base first"
    mutate(broken)
    assert check(broken) != [], f"{fault}: not caught"


def test_the_examples_are_valid_and_outside_the_base() -> None:
    examples = sorted((manifests.PROJECT / "deploy" / "kubernetes" / "examples").glob("*.yaml"))
    listed = yaml.safe_load((manifests.BASE / "kustomization.yaml").read_text())["resources"]
    assert examples
    assert not {example.name for example in examples} & set(listed)
    for example in examples:
        for manifest in yaml.safe_load_all(example.read_text()):
            assert manifests.schema_problems(manifest) == [], example.name


def test_the_example_secret_is_outside_the_base_and_marked() -> None:
    example = manifests.PROJECT / "deploy" / "kubernetes" / "examples" / "secret.example.yaml"
    assert "EXAMPLE ONLY" in example.read_text().splitlines()[0]
    listed = yaml.safe_load((manifests.BASE / "kustomization.yaml").read_text())["resources"]
    assert not any("secret" in name for name in listed)
    for secret in yaml.safe_load_all(example.read_text()):
        assert manifests.schema_problems(secret) == []
        assert all("CHANGE-ME" in value for value in secret["stringData"].values())
