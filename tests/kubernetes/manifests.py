"""Render deploy/kubernetes/base and check it offline: schemas, security, autoscaling.

Rendered in Python, not by the kustomize binary (not packaged for Debian): the base's
kustomization lists `resources` and nothing else, which `render` enforces, so loading
those files in order is what kustomize would emit. Core objects are checked against the
Kubernetes JSON schemas that `kubernetes-validate` ships, in strict mode (unknown fields
are errors, as with `kubectl apply`'s server-side field validation); KEDA and Prometheus
Operator objects against their CRDs' openAPIV3Schema, vendored in schemas/ and made
strict the same way. Each check returns a list of problems, so a test can show that a
broken manifest is caught as well as that the real one passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import yaml

from jobpub.db import queries

PROJECT = Path(__file__).resolve().parents[2]
BASE = PROJECT / "deploy" / "kubernetes" / "base"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The oldest Kubernetes minor still in upstream support when this was written.
KUBERNETES_VERSION = "1.32.0"
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.v1alpha1.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.v1alpha1.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.v1.yaml",
}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources"}
IMAGE_UID = 10001  # the Dockerfile's `USER 10001`
HTTP_PORT = 8080
# Where publishers may connect: PostgreSQL, PgBouncer, MQTT, MQTT over TLS, DNS.
ALLOWED_EGRESS_PORTS = {5432, 6432, 1883, 8883, 53}
# Settings that carry credentials: only ever as a *_FILE path or from a secretKeyRef.
SECRET_SETTINGS = {"JOBPUB_DATABASE_URL", "JOBPUB_MQTT_URL", "JOBPUB_WEB_TOKEN", "PGPASSWORD"}

Manifest = dict[str, Any]


def supported_minor_versions() -> set[str]:
    """The Kubernetes minors whose schemas kubernetes-validate ships (read offline)."""
    return {
        kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()
    }


def render(directory: Path = BASE) -> list[Manifest]:
    """The objects `kustomize build directory` emits for a resources-only kustomization."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    extra = set(kustomization) - KUSTOMIZATION_KEYS
    if extra:
        raise ValueError(f"the base must stay resources-only to be rendered here: {extra}")
    objects: list[Manifest] = []
    for name in kustomization["resources"]:
        objects.extend(doc for doc in yaml.safe_load_all((directory / name).read_text()) if doc)
    return objects


def schema_problems(manifest: Manifest) -> list[str]:
    """What the Kubernetes or CRD schema refuses in this object."""
    where = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    custom = CUSTOM_RESOURCES.get((manifest.get("apiVersion", ""), manifest.get("kind", "")))
    if custom is not None:
        validator = jsonschema.Draft7Validator(crd_schema(custom))
        return [f"{where}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
                for error in validator.iter_errors(manifest)]  # fmt: skip
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {'.'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {manifest.get('apiVersion')} {manifest.get('kind')}"]
    return []


@cache
def crd_schema(file_name: str) -> dict[str, Any]:
    schema: dict[str, Any] = _strict(yaml.safe_load((SCHEMAS / file_name).read_text()))
    return schema


def _strict(schema: Any) -> Any:
    """Unknown fields refused, as the API server's strict field validation does.

    A structural schema that lists `properties` prunes anything else; pruning silently
    drops a misspelt field, so the check treats it as an error instead. Maps
    (`additionalProperties`) and preserve-unknown-fields objects keep what they had.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    # `metadata: {type: object}` is the API server's ObjectMeta, checked by the core schemas.
    return strict


def pod_templates(objects: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(owner, pod spec) for every Deployment and Job."""
    for manifest in objects:
        if manifest["kind"] in ("Deployment", "Job"):
            yield manifest, manifest["spec"]["template"]["spec"]


def security_problems(objects: list[Manifest]) -> list[str]:
    """Each pod runs as the image's non-root user, read-only, unprivileged, bounded."""
    problems = []
    for owner, pod in pod_templates(objects):
        name = f"{owner['kind']}/{owner['metadata']['name']}"
        context = pod.get("securityContext", {})
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") != IMAGE_UID:
            problems.append(f"{name}: pod must run as non-root uid {IMAGE_UID}")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile must be RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: no service account token is needed")
        for container in pod.get("containers", []):
            where = f"{name} container {container['name']}"
            own = container.get("securityContext", {})
            if own.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if own.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
            if own.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities must drop ALL")
            resources = container.get("resources", {})
            if not {"cpu", "memory"} <= set(resources.get("requests", {})):
                problems.append(f"{where}: cpu and memory requests must be set")
            if "memory" not in resources.get("limits", {}):
                problems.append(f"{where}: a memory limit must be set")
            problems.extend(_secret_env_problems(where, container))
    return problems


def _secret_env_problems(where: str, container: Manifest) -> list[str]:
    return [f"{where}: {variable['name']} must come from a Secret, not a value"
            for variable in container.get("env", [])
            if variable["name"] in SECRET_SETTINGS and "value" in variable]  # fmt: skip


def publisher_problems(objects: list[Manifest]) -> list[str]:
    """The Deployment's probes, port and shutdown budget."""
    deployments = [m for m in objects if m["kind"] == "Deployment"]
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    pod = deployments[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    problems = []
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", HTTP_PORT):
            problems.append(f"{probe} must GET {path} on the http port")
    ports = {port.get("name"): port.get("containerPort") for port in container.get("ports", [])}
    if ports.get("http") != HTTP_PORT:
        problems.append(f"port {HTTP_PORT} must be declared and named http")
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    shutdown = float(env.get("JOBPUB_SHUTDOWN_TIMEOUT") or 10)  # jobpub's default
    if pod.get("terminationGracePeriodSeconds", 30) <= shutdown:
        problems.append("terminationGracePeriodSeconds must exceed JOBPUB_SHUTDOWN_TIMEOUT")
    if "replicas" in deployments[0]["spec"]:
        problems.append("the ScaledObject owns the replica count; the Deployment sets none")
    return problems


def autoscaling_problems(objects: list[Manifest]) -> list[str]:
    """The ScaledObject scales the Deployment on a bounded backlog query, by secret."""
    kinds = {(m["kind"], m["metadata"]["name"]): m for m in objects}
    scaled = [m for m in objects if m["kind"] == "ScaledObject"]
    if len(scaled) != 1:
        return [f"expected one ScaledObject, found {len(scaled)}"]
    spec = scaled[0]["spec"]
    problems = []
    target = spec["scaleTargetRef"]
    if (target.get("kind"), target["name"]) not in kinds or target.get("kind") != "Deployment":
        problems.append("scaleTargetRef must name the Deployment")
    triggers = [t for t in spec["triggers"] if t["type"] == "postgresql"]
    if len(triggers) != 1:
        return [*problems, "expected one postgresql trigger"]
    trigger = triggers[0]
    query = " ".join(trigger["metadata"].get("query", "").split())
    if queries.PENDING not in query or "fire_at <= now()" not in query:
        problems.append("the backlog query must use the partial index's predicate and due")
    if not re.search(r"\bLIMIT \d+\b", query):
        problems.append("the backlog query must be bounded by a LIMIT")
    if "connection" in trigger["metadata"] or "password" in trigger["metadata"]:
        problems.append("the trigger must not carry credentials")
    auth = trigger.get("authenticationRef", {}).get("name")
    authentication = kinds.get(("TriggerAuthentication", auth))
    if authentication is None:
        problems.append("the postgresql trigger must use a TriggerAuthentication of the base")
    elif not authentication["spec"].get("secretTargetRef"):
        problems.append("the TriggerAuthentication must read a Secret by reference")
    return problems


def backlog_query(objects: list[Manifest]) -> str:
    """The SQL KEDA runs, as the manifest has it."""
    for manifest in objects:
        if manifest["kind"] == "ScaledObject":
            for trigger in manifest["spec"]["triggers"]:
                if trigger["type"] == "postgresql":
                    return str(trigger["metadata"]["query"])
    raise LookupError("no postgresql trigger")


def network_problems(objects: list[Manifest]) -> list[str]:
    """Ingress only to 8080 from the monitoring namespace; egress only where it must."""
    policies = [m for m in objects if m["kind"] == "NetworkPolicy"]
    if len(policies) != 1:
        return [f"expected one NetworkPolicy, found {len(policies)}"]
    spec = policies[0]["spec"]
    problems = []
    if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append("the policy must govern both Ingress and Egress")
    for rule in spec.get("ingress", []):
        sources = rule.get("from", [])
        ports = {p.get("port") for p in rule.get("ports", [])}
        namespaces = [s.get("namespaceSelector", {}).get("matchLabels", {}) for s in sources]
        if (
            ports != {HTTP_PORT}
            or not sources
            or any(n != {"kubernetes.io/metadata.name": "monitoring"} for n in namespaces)
        ):
            problems.append(f"ingress rule too wide: {rule}")
    for rule in spec.get("egress", []):
        ports = {p.get("port") for p in rule.get("ports", [])}
        if not ports or not ports <= ALLOWED_EGRESS_PORTS:
            problems.append(f"egress rule too wide: {rule}")
    return problems


def secret_problems(objects: list[Manifest]) -> list[str]:
    """The base references Secrets; it never carries one."""
    return [f"Secret/{m['metadata']['name']} must not be in the base"
            for m in objects if m["kind"] == "Secret"]  # fmt: skip


def all_problems(objects: list[Manifest]) -> list[str]:
    return [
        *(problem for manifest in objects for problem in schema_problems(manifest)),
        *security_problems(objects),
        *publisher_problems(objects),
        *autoscaling_problems(objects),
        *network_problems(objects),
        *secret_problems(objects),
    ]
