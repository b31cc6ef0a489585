"""Kustomize overlays render, pass strict schema validation, and keep the production settings."""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import check_settings, one, render, settings_of

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate missing: pip install -r requirements-deploy.txt"
)

# Oldest cluster version we promise to support, and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", "latest")
# CRDs have no built-in schema; their structure is checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


def _container(docs: list[dict]) -> dict:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _config(docs: list[dict]) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_documents_pass_strict_schema(overlay, version):
    name, docs = overlay
    if version == "latest":
        version = str(kubernetes_validate.latest_version())
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message}")
        checked += 1
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress",
            "NetworkPolicy"} <= kinds
    assert checked == len(docs) - len([d for d in docs if d["kind"] in CRD_KINDS])


def test_overlay_puts_everything_in_one_namespace(overlay):
    _, docs = overlay
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"imdn"}
    assert one(docs, "Namespace")["metadata"]["name"] == "imdn"


def test_probes_use_health_and_ready_endpoints(overlay):
    _, docs = overlay
    c = _container(docs)
    port = c["ports"][0]
    assert port["containerPort"] == 8000 and port["name"] == "http"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    # Model load + warm-up needs minutes on CPU; the startup probe must allow it.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 8000)


def test_grace_period_covers_prestop_and_drain(overlay):
    _, docs = overlay
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = _container(docs)
    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pre_stop_s = int(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        pre_stop_s = int(command[1])
    drain_s = float(_config(docs)["IMDN_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s


def test_pod_is_hardened(overlay):
    _, docs = overlay
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sc = _container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    # Read-only root: /tmp must be a writable emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in _container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_container_has_requests_and_limits(overlay):
    _, docs = overlay
    resources = _container(docs)["resources"]
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[key])


def test_config_sets_known_settings_only(overlay):
    _, docs = overlay
    data = _config(docs)
    assert all(re.fullmatch(r"IMDN_[A-Z0-9_]+", key) for key in data)
    check_settings(data)
    assert {"IMDN_DEVICE", "IMDN_MODELS", "IMDN_DRAIN_TIMEOUT_S"} <= set(data)
    # The deployment must actually read the generated (hash-suffixed) ConfigMap.
    refs = [e["configMapRef"]["name"] for e in _container(docs)["envFrom"] if "configMapRef" in e]
    assert refs == [one(docs, "ConfigMap")["metadata"]["name"]]


def test_cpu_overlay_runs_on_cpu():
    docs = render("cpu")
    assert _config(docs)["IMDN_DEVICE"] == "cpu"
    c = _container(docs)
    assert c["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_gpu_overlay_requests_a_gpu_node():
    docs = render("gpu")
    assert _config(docs)["IMDN_DEVICE"] == "cuda"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = _container(docs)
    assert c["image"].endswith("-cuda")
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"], "GPU pods need a nodeSelector for GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_hpa_scales_on_queue_metrics_with_cpu_fallback(overlay):
    _, docs = overlay
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = one(docs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    pod_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pod_metrics & {"imdn_queue_depth", "imdn_requests_in_flight"}
    resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    assert "cpu" in resources
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_pdb_and_service_select_the_pods(overlay):
    _, docs = overlay
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    svc = one(docs, "Service")["spec"]["selector"]
    assert pdb.items() <= pod_labels.items()
    assert svc.items() <= pod_labels.items()


def test_servicemonitor_scrapes_the_service_metrics(overlay):
    _, docs = overlay
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "imdn"
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}


# --- behind a load balancer: timings, Ingress, NetworkPolicy ------------------------------------


def _pre_stop_s(container: dict) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    return int(pre_stop["sleep"]["seconds"]) if "sleep" in pre_stop else int(pre_stop["exec"]["command"][1])


def test_rollout_never_cuts_a_request_within_its_timeout(overlay):
    """SIGTERM -> drain: every request admitted before it ends within IMDN_REQUEST_TIMEOUT_S, so the drain must
    last that long, and SIGKILL (grace period) must come after preStop + drain."""
    _, docs = overlay
    settings = settings_of(_config(docs))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert settings.drain_timeout_s >= settings.request_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= _pre_stop_s(_container(docs)) + settings.drain_timeout_s + 10
    # ingress-nginx's upstream keep-alive is 60 s: the pod must not close idle connections first.
    assert settings.keepalive_s > 60


def test_ingress_fits_the_service_limits(overlay):
    _, docs = overlay
    settings = settings_of(_config(docs))
    ingress = one(docs, "Ingress")
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    body = notes[prefix + "proxy-body-size"]
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    assert int(body[:-1]) * units[body[-1].lower()] >= settings.max_upload_bytes
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[prefix + timeout]) >= settings.request_timeout_s, timeout
    assert notes[prefix + "proxy-buffering"] == "off"  # PNG bands stream through
    assert notes[prefix + "proxy-request-buffering"] == "off"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    svc = one(docs, "Service")
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"] == {"name": "http"}, "only the API port goes public"


def test_metrics_have_their_own_port(overlay):
    _, docs = overlay
    settings = settings_of(_config(docs))
    ports = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}
    assert settings.metrics_port == ports["metrics"] != ports["http"]
    svc_ports = {p["name"]: p["targetPort"] for p in one(docs, "Service")["spec"]["ports"]}
    assert svc_ports == {"http": "http", "metrics": "metrics"}
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert settings.docs is False


def test_network_policy_admits_only_the_ingress_and_prometheus(overlay):
    _, docs = overlay
    policy = one(docs, "NetworkPolicy")["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    admitted = {}
    for rule in policy["ingress"]:
        (source,) = rule["from"]
        (port,) = rule["ports"]
        admitted[port["port"]] = (source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                                  source["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
    assert admitted == {"http": ("ingress-nginx", "ingress-nginx"), "metrics": ("monitoring", "prometheus")}


def test_pods_spread_across_zones_and_nodes(overlay):
    _, docs = overlay
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]


def test_gpu_pods_are_guaranteed_qos():
    docs = render("gpu")
    resources = _container(docs)["resources"]
    assert resources["requests"] == resources["limits"]
    settings = settings_of(_config(docs))
    assert settings.workers <= int(resources["limits"]["cpu"]), "a worker per CPU at most"


# --- KEDA instead of the HPA -----------------------------------------------------------------------


def test_keda_overlay_replaces_the_hpa_with_a_scaled_object():
    docs = render("gpu-keda")
    kinds = [d["kind"] for d in docs]
    assert "HorizontalPodAutoscaler" not in kinds, "KEDA makes its own HPA; two on one Deployment fight"
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["namespace"] == "imdn"
    deployment = one(docs, "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    assert any("imdn_queue_depth" in q for q in queries)
    assert scaled["spec"]["fallback"]["replicas"] >= scaled["spec"]["minReplicaCount"]
    assert 2 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] == 4
