"""deploy/k8s, offline: every overlay renders with `kubectl kustomize`; every object it renders
passes kubernetes-validate's strict schemas for the Kubernetes of the kubectl used here (1.32),
the ScaledObject a schema written from KEDA 2.17's documented specification (deploy/k8s/schemas);
and the rules the manifests exist to keep hold on what they render: Pod Security `restricted` in
every container, the drain's grace period, KEDA owning the workers' scale down to zero, the
overlay's image everywhere, Redis reachable from the API and the workers only, and every
DOCKGUARD_* setting one dockguard reads.

No cluster is involved (scripts/validate-manifests.sh runs this file after rendering); what only
a cluster can show (admission, scheduling, NetworkPolicy enforcement) is not checked here."""

from __future__ import annotations

import base64
import functools
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography.fernet import Fernet
from pydantic import ValidationError

from dockguard.jobs.worker import _DRAIN_TIMEOUT_S
from dockguard.settings import EXAMPLE_SECRETS, Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("single-node", "production")
KUBERNETES_VERSION = "1.32"  # kubectl 1.32's, and the one KEDA 2.17 was built against
RENDER_TIMEOUT_S = 120
API_NAMESPACE = "dockguard"
SANDBOX_NAMESPACE = "dockguard-sandbox"
API_LABELS = {"app.kubernetes.io/name": "dockguard", "app.kubernetes.io/component": "api"}
WORKER_LABELS = {"app.kubernetes.io/name": "dockguard", "app.kubernetes.io/component": "worker"}
WORKLOADS = ("Deployment", "StatefulSet")
SECRET_SETTINGS = ("DOCKGUARD_REDIS_URL", "DOCKGUARD_ENCRYPTION_KEY", "DOCKGUARD_CALLBACK_SECRET")

Obj = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------------


@functools.cache
def _rendered(directory: Path) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: it renders deploy/k8s (`kubectl kustomize`, kubectl >= 1.27 "
            "with its built-in kustomize); install it to run these tests"
        )
    try:
        done = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`kubectl kustomize {directory}` took more than {RENDER_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(f"`kubectl kustomize {directory}` failed: {done.stderr.strip()}")
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def render(overlay: str) -> tuple[Obj, ...]:
    return _rendered(K8S / "overlays" / overlay)


def objects(overlay: str, kind: str, namespace: str | None = None) -> list[Obj]:
    return [
        obj
        for obj in render(overlay)
        if obj["kind"] == kind and namespace in (None, obj["metadata"].get("namespace"))
    ]


def one(overlay: str, kind: str, name: str, namespace: str) -> Obj:
    found = [obj for obj in objects(overlay, kind, namespace) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def api(overlay: str) -> Obj:
    return one(overlay, "Deployment", "dockguard-api", API_NAMESPACE)


def worker(overlay: str) -> Obj:
    return one(overlay, "Deployment", "dockguard-worker", SANDBOX_NAMESPACE)


def containers(workload: Obj) -> Iterator[Obj]:
    pod = workload["spec"]["template"]["spec"]
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a matchLabels-only selector (the only kind these manifests use) picks `labels`."""
    assert set(selector) <= {"matchLabels"}, f"selector beyond matchLabels: {selector}"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def settings_of(overlay: str, workload: Obj) -> dict[str, str]:
    """The DOCKGUARD_* (and DOCKER_*) environment a workload's first container gets: its
    ConfigMaps, then its literal env values (Secret references are named, not resolved)."""
    namespace = workload["metadata"]["namespace"]
    container = workload["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(overlay, "ConfigMap", name, namespace)["data"])
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else f"<from {item['valueFrom']}>"
    return env


# --- schemas -----------------------------------------------------------------------------------


@functools.cache
def scaledobject_validator() -> jsonschema.Draft7Validator:
    schema = yaml.safe_load((K8S / "schemas" / "scaledobject.schema.yaml").read_text())
    return jsonschema.Draft7Validator(schema)


def _kubernetes_errors(obj: Obj, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {'.'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: {error.message}"]
    return []


def _hpa_behavior_errors(scaled: Obj, where: str) -> list[str]:
    """The ScaledObject's HPA behavior is autoscaling/v2's: checked with Kubernetes' own schema,
    inside an HPA made for the purpose."""
    config = scaled["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
    if "behavior" not in config:
        return []
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "behavior-check"},
        "spec": {
            "scaleTargetRef": scaled["spec"]["scaleTargetRef"],
            "maxReplicas": 1,
            "behavior": config["behavior"],
        },
    }
    return _kubernetes_errors(hpa, f"{where} (behavior)")


def schema_errors(obj: Obj) -> list[str]:
    where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
    if obj["kind"] == "ScaledObject":
        found = [
            f"{where}: {'.'.join(map(str, error.path))}: {error.message}"
            for error in scaledobject_validator().iter_errors(obj)
        ]
        return found + _hpa_behavior_errors(obj, where)
    return _kubernetes_errors(obj, where)


@pytest.mark.parametrize("directory", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_every_object_passes_its_schema_strictly(directory: str) -> None:
    rendered = _rendered(K8S / directory)
    assert len(rendered) > 10, f"{directory} rendered only {len(rendered)} objects"
    errors = [error for obj in rendered for error in schema_errors(obj)]
    assert not errors, "\n".join(errors)


def test_the_schemas_refuse_what_is_wrong() -> None:
    """The validation above can fail: an unknown field, a wrong type, in both kinds of schema."""
    deployment = dict(api("single-node"), replicaCount=2)
    assert schema_errors(deployment)
    scaled = dict(objects("single-node", "ScaledObject")[0])
    assert not schema_errors(scaled)
    assert schema_errors({**scaled, "spec": {**scaled["spec"], "minReplicaCount": "zero"}})
    assert schema_errors({**scaled, "spec": {**scaled["spec"], "minReplicas": 0}})
    trigger = scaled["spec"]["triggers"][0]
    misspelt = {**trigger, "metadata": {**trigger["metadata"], "treshold": "4"}}
    assert schema_errors({**scaled, "spec": {**scaled["spec"], "triggers": [misspelt]}})
    behavior = {"scaleDown": {"policies": [{"type": "Pods", "value": "one", "periodSeconds": 60}]}}
    advanced = {"horizontalPodAutoscalerConfig": {"behavior": behavior}}
    assert schema_errors({**scaled, "spec": {**scaled["spec"], "advanced": advanced}})


# --- Pod Security ------------------------------------------------------------------------------


def _effective(pod: Obj, container: Obj, field: str) -> Any:
    """A security field as the kubelet applies it: the container's, else the pod's."""
    return container.get("securityContext", {}).get(
        field, pod.get("securityContext", {}).get(field)
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_meets_pod_security_restricted(overlay: str) -> None:
    """No exception, the worker included: it runs as uid 10001 with the socket's group, and the
    build process limit, which would need root, is off
    (test_the_worker_settings_fit_a_non_root_pod)."""
    workloads = [obj for kind in WORKLOADS for obj in objects(overlay, kind)]
    assert len(workloads) >= 2
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        for container in containers(workload):
            where = f"{overlay}: {workload['metadata']['name']}/{container['name']}"
            context = container.get("securityContext", {})
            assert _effective(pod, container, "runAsNonRoot") is True, where
            assert _effective(pod, container, "runAsUser") not in (None, 0), where
            assert _effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("privileged", False) is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"
        assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_namespace_is_privileged_only_for_the_engine_socket(overlay: str) -> None:
    levels = {
        ns["metadata"]["name"]: ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for ns in objects(overlay, "Namespace")
    }
    assert levels[API_NAMESPACE] == "restricted"
    needs_host_path = {
        obj["metadata"]["namespace"]
        for kind in WORKLOADS
        for obj in objects(overlay, kind)
        if any("hostPath" in v for v in obj["spec"]["template"]["spec"].get("volumes", []))
    }
    for namespace, level in levels.items():
        # `baseline` forbids hostPath too: a socket from the node means `privileged`.
        assert (level == "privileged") == (namespace in needs_host_path), (namespace, level)
        assert level in ("restricted", "privileged")


# --- the API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_serves_on_8000_with_probes_an_hpa_and_a_pdb(overlay: str) -> None:
    deployment = api(overlay)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve", "--no-worker", "--host", "0.0.0.0"]
    assert "command" not in container  # the image's entrypoint is `dockguard`
    # The API, and its /metrics alone on a port of their own (on DOCKGUARD_HOST).
    env = settings_of(overlay, deployment)
    assert env["DOCKGUARD_HOST"] == "0.0.0.0"
    metrics_port = int(env["DOCKGUARD_API_METRICS_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [8000, metrics_port]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    # Ready once it can store jobs: no engine socket in this pod, and workers may be at zero.
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz?exclude=docker&exclude=workers",
        "port": 8000,
    }
    assert "replicas" not in deployment["spec"], "the HPA owns the API's replicas"

    service = one(overlay, "Service", "dockguard-api", API_NAMESPACE)
    assert selects({"matchLabels": service["spec"]["selector"]}, API_LABELS)
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, metrics_port]
    assert "publishNotReadyAddresses" not in service["spec"]  # readiness gates the endpoints

    hpa = one(overlay, "HorizontalPodAutoscaler", "dockguard-api", API_NAMESPACE)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "dockguard-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one(overlay, "PodDisruptionBudget", "dockguard-api", API_NAMESPACE)
    assert selects(pdb["spec"]["selector"], API_LABELS)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# --- the workers and KEDA ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_workers_run_on_the_tainted_sandbox_nodes_only(overlay: str) -> None:
    pod = worker(overlay)["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["worker"]
    assert {
        "key": "dockguard.io/sandbox",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    for term in required["nodeSelectorTerms"]:  # terms are ORed: each one must demand the label
        expression = {"key": "dockguard.io/sandbox", "operator": "In", "values": ["true"]}
        assert expression in term["matchExpressions"], term


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_workers_grace_period_covers_the_drain(overlay: str) -> None:
    """A stopping worker lets its jobs finish for DOCKGUARD_WORKER_SHUTDOWN_GRACE_S (where this
    dockguard has that setting), then waits up to _DRAIN_TIMEOUT_S for their cleanup; 10 s more
    to close. The kubelet's SIGKILL must come after all of it."""
    deployment = worker(overlay)
    finish = Settings.model_fields.get("worker_shutdown_grace_s")
    finish_s = float(
        settings_of(overlay, deployment).get(
            "DOCKGUARD_WORKER_SHUTDOWN_GRACE_S", finish.default if finish else 0
        )
    )
    grace_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s >= finish_s + _DRAIN_TIMEOUT_S + 10, (grace_s, finish_s, _DRAIN_TIMEOUT_S)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_settings_fit_a_non_root_pod(overlay: str) -> None:
    deployment = worker(overlay)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = settings_of(overlay, deployment)
    # The build process limit writes the host's cgroupfs as root: off, or every build fails.
    assert env["DOCKGUARD_BUILD_PIDS"] == "0"
    # The worker's /metrics listens on DOCKGUARD_HOST, on the port the pod and Service name.
    assert env["DOCKGUARD_HOST"] == "0.0.0.0"
    ports = [port["containerPort"] for port in container["ports"]]
    assert ports == [int(env["DOCKGUARD_WORKER_METRICS_PORT"])] == [9101]
    service = one(overlay, "Service", "dockguard-worker-metrics", SANDBOX_NAMESPACE)
    assert selects({"matchLabels": service["spec"]["selector"]}, WORKER_LABELS)
    # The root filesystem is read-only: what the worker writes has a volume.
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", env["DOCKGUARD_SCANNER_CACHE_DIR"]} <= mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_workers_on_the_queue_down_to_zero(overlay: str) -> None:
    (scaled,) = objects(overlay, "ScaledObject")
    assert scaled["metadata"]["namespace"] == SANDBOX_NAMESPACE
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker(overlay)["metadata"]["name"],
    }
    assert scaled["spec"]["minReplicaCount"] == 0
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"].startswith("max(dockguard_queue_depth")
    # No depth scraped is an error, so the fallback keeps a worker (not "0 jobs": none at all).
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert scaled["spec"]["fallback"]["replicas"] >= 1
    env = settings_of(overlay, worker(overlay))
    assert trigger["metadata"]["threshold"] == env["DOCKGUARD_WORKER_CONCURRENCY"]
    assert "replicas" not in worker(overlay)["spec"], "KEDA owns the workers' replicas"
    targets = [
        h["spec"]["scaleTargetRef"]["name"] for h in objects(overlay, "HorizontalPodAutoscaler")
    ]
    assert targets == ["dockguard-api"], "KEDA makes the workers' HPA: no other may target them"


def test_single_node_workers_use_the_nodes_socket() -> None:
    pod = worker("single-node")["spec"]["template"]["spec"]
    (socket,) = [v for v in pod["volumes"] if v["name"] == "docker-sock"]
    assert socket["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    assert pod["securityContext"]["supplementalGroups"], "the socket's group"
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "docker-sock", "mountPath": "/var/run/docker.sock"} in mounts
    assert "DOCKGUARD_DOCKER_URL" not in settings_of("single-node", worker("single-node"))


def test_production_workers_use_an_engine_over_tls() -> None:
    deployment = worker("production")
    pod = deployment["spec"]["template"]["spec"]
    env = settings_of("production", deployment)
    assert env["DOCKGUARD_DOCKER_URL"].startswith("tcp://")
    assert env["DOCKGUARD_DOCKER_URL"].endswith(":2376")
    assert env["DOCKER_TLS_VERIFY"] == "1"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    (tls,) = [v for v in pod["volumes"] if v["name"] == "engine-tls"]
    assert tls["secret"]["secretName"] == "dockguard-engine-tls"
    assert mounts["engine-tls"]["mountPath"] == env["DOCKER_CERT_PATH"]
    assert not any("hostPath" in v for v in pod["volumes"])


# --- images, Redis, secrets --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_dockguard_container_has_the_overlays_image(overlay: str) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == "dockguard"]
    expected = f"{image['newName']}:{image['newTag']}"
    assert expected != "dockguard:latest"
    for deployment in (api(overlay), worker(overlay)):
        for container in containers(deployment):
            assert container["image"] == expected, (deployment["metadata"]["name"], container)


def _peer_is(peer: Obj, namespace: str, labels: dict[str, str], own_namespace: str) -> bool:
    """Whether a NetworkPolicy peer admits pods with `labels` in `namespace` and nothing else."""
    if set(peer) - {"podSelector", "namespaceSelector"} or "podSelector" not in peer:
        return False
    if peer["podSelector"].get("matchLabels") != labels:
        return False
    if "namespaceSelector" not in peer:
        return own_namespace == namespace
    expected = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return bool(peer["namespaceSelector"] == expected)


def test_nothing_but_the_api_and_the_workers_reaches_redis() -> None:
    (redis,) = objects("single-node", "StatefulSet")
    namespace = redis["metadata"]["namespace"]
    labels = redis["spec"]["template"]["metadata"]["labels"]
    policies = [
        policy
        for policy in objects("single-node", "NetworkPolicy", namespace)
        if selects(policy["spec"]["podSelector"], labels)
    ]
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies)
    peers = []
    for policy in policies:
        if "Ingress" not in policy["spec"]["policyTypes"]:
            continue
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule from anywhere"
            assert rule.get("ports") == [{"protocol": "TCP", "port": 6379}]
            peers += rule["from"]
    admitted = [
        kind
        for peer in peers
        for kind, (ns, want) in {
            "api": (API_NAMESPACE, API_LABELS),
            "worker": (SANDBOX_NAMESPACE, WORKER_LABELS),
        }.items()
        if _peer_is(peer, ns, want, namespace)
    ]
    assert sorted(admitted) == ["api", "worker"] and len(peers) == 2, peers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_the_api_and_prometheus_only_its_metrics(overlay: str) -> None:
    """dockguard has no authentication: whoever reaches 8000 can submit and read every job.
    Prometheus gets the metrics port, where nothing but /metrics is served."""
    metrics_port = int(settings_of(overlay, api(overlay))["DOCKGUARD_API_METRICS_PORT"])
    admitted: dict[int, list[Obj]] = {}
    for policy in objects(overlay, "NetworkPolicy", API_NAMESPACE):
        if "Ingress" not in policy["spec"]["policyTypes"]:
            continue
        if not selects(policy["spec"]["podSelector"], API_LABELS):
            continue
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule from anywhere"
            for port in rule["ports"]:
                assert port["protocol"] == "TCP"
                admitted.setdefault(port["port"], []).extend(rule["from"])
    gateway = {"namespaceSelector": {"matchLabels": {"dockguard.io/gateway": "true"}}}
    monitoring = {"namespaceSelector": {"matchLabels": {"dockguard.io/monitoring": "true"}}}
    assert admitted == {8000: [gateway], metrics_port: [monitoring]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespace_denies_by_default(overlay: str) -> None:
    for namespace in (API_NAMESPACE, SANDBOX_NAMESPACE):
        policies = objects(overlay, "NetworkPolicy", namespace)
        assert any(
            p["spec"]["podSelector"] == {}
            and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
            and "ingress" not in p["spec"]
            and "egress" not in p["spec"]
            for p in policies
        ), namespace
        for policy in policies:  # no rule opens everything
            for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
                assert rule.get("ports"), f"{overlay}: {policy['metadata']['name']}: every port"


def test_worker_https_egress_avoids_private_ranges() -> None:
    policy = one("production", "NetworkPolicy", "worker-egress-https", SANDBOX_NAMESPACE)
    (rule,) = policy["spec"]["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}]
    for peer in rule["to"]:
        excluded = [ipaddress.ip_network(cidr) for cidr in peer["ipBlock"]["except"]]
        for private in ("10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "fd00::1"):
            address = ipaddress.ip_address(private)
            if address.version == ipaddress.ip_network(peer["ipBlock"]["cidr"]).version:
                assert any(address in net for net in excluded), (private, peer)


def test_production_uses_an_external_redis_and_keeps_no_secret() -> None:
    assert not objects("production", "StatefulSet")
    assert not objects("production", "Secret")
    for deployment in (api("production"), worker("production")):
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["DOCKGUARD_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "dockguard"


def test_the_single_node_secrets_are_obviously_examples() -> None:
    assert not [obj for obj in _rendered(K8S / "base") if obj["kind"] == "Secret"]
    secrets = objects("single-node", "Secret")
    assert {s["metadata"]["namespace"] for s in secrets} == {API_NAMESPACE, SANDBOX_NAMESPACE}
    for secret in secrets:
        for key, value in secret["data"].items():
            text = base64.b64decode(value).decode()
            if key == "DOCKGUARD_ENCRYPTION_KEY":  # a Fernet key spelling its nature
                text = base64.urlsafe_b64decode(text).decode()
            assert "example" in text.lower(), (secret["metadata"]["name"], key)
    (auth,) = [s for s in secrets if s["metadata"]["name"].startswith("redis-auth")]
    password = base64.b64decode(auth["data"]["redis.conf"]).decode().split()[-1]
    for secret in secrets:
        if "DOCKGUARD_REDIS_URL" in secret["data"]:
            assert (
                f":{password}@" in base64.b64decode(secret["data"]["DOCKGUARD_REDIS_URL"]).decode()
            )


def replace_example_secrets(values: dict[str, str]) -> dict[str, str]:
    """The settings with each example secret replaced, as an operator does before use."""
    replaced = dict(values)
    replaced["encryption_key"] = Fernet.generate_key().decode()
    replaced["callback_secret"] = "an-operators-own-secret"
    for password in EXAMPLE_SECRETS["redis password"]:
        replaced["redis_url"] = replaced["redis_url"].replace(password, "an-operators-password")
    return replaced


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_one_dockguard_reads(overlay: str) -> None:
    """A misspelt DOCKGUARD_* name would be ignored silently (extra="ignore"): each must be a
    Settings field; the secret ones come from the Secret only; and the values (with the example
    Secret's, where the overlay has one) pass Settings' own validation."""
    fields = {f"DOCKGUARD_{name.upper()}" for name in Settings.model_fields}
    for config in objects(overlay, "ConfigMap"):
        assert not set(SECRET_SETTINGS) & set(config["data"]), "a secret in a ConfigMap"
    for deployment in (api(overlay), worker(overlay)):
        namespace = deployment["metadata"]["namespace"]
        env = {k: v for k, v in settings_of(overlay, deployment).items() if "DOCKGUARD_" in k}
        assert set(env) <= fields, set(env) - fields
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        rendered = {s["metadata"]["name"]: s for s in objects(overlay, "Secret", namespace)}
        for item in container["env"]:
            if item["name"] not in SECRET_SETTINGS:
                continue
            reference = item["valueFrom"]["secretKeyRef"]
            del env[item["name"]]
            if reference["name"] in rendered:  # the example Secret (single-node)
                data = rendered[reference["name"]]["data"]
                env[item["name"]] = base64.b64decode(data[reference["key"]]).decode()
            else:  # one the operator creates (production)
                assert reference["name"] == "dockguard", item
        values = {key.removeprefix("DOCKGUARD_").lower(): value for key, value in env.items()}
        if overlay == "single-node":  # its example secrets are refused until replaced…
            with pytest.raises(ValidationError, match="the example value of"):
                Settings.model_validate(values)
            values = replace_example_secrets(values)
        Settings.model_validate(values)  # …and the rest is valid: no environment, no .env
