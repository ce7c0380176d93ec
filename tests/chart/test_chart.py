"""The chart lints, renders valid Kubernetes objects for every values file, refuses bad values
by name, runs the operator as Pod Security "restricted" asks, and ships the CRDs of crds/."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from phiops_operator.builders.common import labels
from phiops_operator.builders.phi_deployment import SERVER_COMPONENT

from tests.chart import sync
from tests.chart.manifests import VALUES_FILES, VALUES_NAMES, by_kind, one, rendered
from tests.chart.tools import CHART, REPO, helm, template
from tests.pod_security import violations

# Kubernetes versions the rendered objects are validated against (offline schemas).
KUBERNETES_VERSIONS = ("1.28.0", "1.33.0")
# Prometheus operator kinds: no Kubernetes schema; checked structurally below.
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_there_are_the_values_files_the_tests_promise() -> None:
    assert {"defaults", "namespaced", "everything", "no-crds"} <= set(VALUES_NAMES)


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint(strict: bool) -> None:
    args = ["lint", str(CHART)] + (["--strict"] if strict else [])
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_helm_lint_with_each_values_file(values: Path) -> None:
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART), "-f", str(values)).stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", VALUES_NAMES)
def test_rendered_objects_validate_against_kubernetes_schemas(values: str, version: str) -> None:
    docs = rendered(values)
    assert docs, "nothing rendered"
    checked = 0
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {err.message}")
        checked += 1
    assert checked >= 8


def _monitoring_docs() -> list[dict[str, Any]]:
    return [d for d in rendered("everything") if d["kind"] in MONITORING_KINDS]


def test_monitoring_objects_are_structurally_sound() -> None:
    docs = {d["kind"]: d for d in _monitoring_docs()}
    assert set(docs) == MONITORING_KINDS
    for doc in docs.values():
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "phiops"
        assert doc["metadata"]["labels"]["release"] == "prometheus"
    monitor = docs["ServiceMonitor"]["spec"]
    service = one(rendered("everything"), "Service")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["namespaceSelector"] == {"matchNames": ["phiops"]}
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True, "keep the resources' namespace/name labels"
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "5s"
    assert {"targetLabel": "job", "replacement": "phiops-operator"} in endpoint["relabelings"]
    # The inference pods, as the operator labels them (builders.common.labels).
    pods = docs["PodMonitor"]["spec"]
    server_labels = labels("PhiDeployment", "assistant", SERVER_COMPONENT)
    assert pods["selector"]["matchLabels"].items() <= server_labels.items()
    (pod_endpoint,) = pods["podMetricsEndpoints"]
    assert pod_endpoint["port"] == "http"
    assert {"targetLabel": "job", "replacement": "phiops-serve"} in pod_endpoint["relabelings"]
    groups = docs["PrometheusRule"]["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    for group in groups:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            assert isinstance(rule["expr"], str) and rule["expr"].strip()


def test_prometheus_rule_values_reach_the_rules() -> None:
    (rule,) = [d for d in _monitoring_docs() if d["kind"] == "PrometheusRule"]
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "> 10" in rules["PhiopsInferenceLatencyHigh"]["expr"]
    assert "> 3600" in rules["PhiopsFineTuneJobStuck"]["expr"]
    assert (
        "4 * phiops_knowledge_base_sync_interval_seconds"
        in rules["PhiopsKnowledgeBaseStale"]["expr"]
    )
    assert "> 0.05" in rules["PhiopsReconcileErrors"]["expr"]
    assert "[5m])) > 8\n" in rules["PhiopsInferenceQueueBacklog"]["expr"]
    assert "more than 8 and" in rules["PhiopsInferenceQueueBacklog"]["annotations"]["description"]
    assert rules["PhiopsKVCacheSaturated"]["expr"].endswith("> 0.9")
    assert "above 90%," in rules["PhiopsKVCacheSaturated"]["annotations"]["description"]
    assert rules["PhiopsOperatorDown"]["annotations"]["runbook_url"] == (
        "https://docs.example.com/phiops/operations/alerts#phiopsoperatordown"
    )


def test_dashboard_configmap() -> None:
    (config_map,) = [
        d
        for d in by_kind(rendered("everything"), "ConfigMap")
        if "dashboard" in d["metadata"]["name"]
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "phiops"}
    assert json.loads(config_map["data"]["phiops.json"]) == sync.dashboard()


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {d["kind"] for d in rendered("defaults")}
    assert not kinds & MONITORING_KINDS
    assert not any(
        "dashboard" in d["metadata"]["name"] for d in by_kind(rendered("defaults"), "ConfigMap")
    )


# --- values.schema.json ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("imagee.tag=1", "Additional property imagee is not allowed"),
        ("rbac.scpe=cluster", "rbac: Additional property scpe is not allowed"),
        ("serviceMonitor.enable=true", "serviceMonitor: Additional property enable is not allowed"),
        ("crds.keep=maybe", "crds.keep: Invalid type. Expected: boolean, given: string"),
        ("workerLimit=many", "workerLimit: Invalid type. Expected: integer, given: string"),
        ("metrics.port=70000", "metrics.port: Must be less than or equal to 65535"),
        ("rbac.scope=everywhere", "rbac.scope: rbac.scope must be one of the following"),
        ("logLevel=loud", "logLevel: logLevel must be one of the following"),
        ("watchNamespaces[0]=Team_A", "watchNamespaces.0: Does not match pattern"),
        # a share, not a percentage
        (
            "prometheusRule.inferenceKVCacheUsage=95",
            "prometheusRule.inferenceKVCacheUsage: Must be less than or equal to 1",
        ),
    ],
)
def test_schema_rejects_bad_values_naming_them(setting: str, named: str) -> None:
    proc = helm("template", "phiops", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0, f"--set {setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named in proc.stderr, proc.stderr


def _object_schemas(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if schema.get("type") == "object":
        found.append((path or "(root)", schema))
    for name, sub in (schema.get("properties") or {}).items():
        found += _object_schemas(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _object_schemas(schema["items"], f"{path}[]")
    return found


# Objects passed through to Kubernetes as they are (their own schema is Kubernetes').
FREE_FORM = {
    ".global",
    ".affinity.nodeAffinity",
    ".affinity.podAffinity",
    ".affinity.podAntiAffinity",
}


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, sub in _object_schemas(schema):
        if path in FREE_FORM:
            continue
        extra = sub.get("additionalProperties")
        assert extra is False or isinstance(extra, dict), f"{path} accepts unknown keys"
        if "properties" in sub:
            assert extra is False, f"{path} has properties but accepts unknown keys"


def test_every_default_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, sub: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and "properties" in sub:
            for key, item in value.items():
                assert key in sub["properties"], f"{path}.{key} is not in values.schema.json"
                walk(item, sub["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


# --- the operator Deployment --------------------------------------------------------------


def _container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def _assert_restricted(pod_spec: dict[str, Any]) -> None:
    """Pod Security Standards "restricted" (tests/pod_security.py, as for the workloads)."""
    assert violations(pod_spec) == []


@pytest.mark.parametrize("values", VALUES_NAMES)
def test_operator_and_test_pods_pass_pod_security_restricted(values: str) -> None:
    docs = rendered(values)
    deployment = one(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    _assert_restricted(pod_spec)
    assert pod_spec["securityContext"]["runAsUser"] == 10001
    assert _container(docs)["securityContext"]["readOnlyRootFilesystem"] is True
    (test_pod,) = [d for d in by_kind(docs, "Pod")]
    _assert_restricted(test_pod["spec"])
    assert test_pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_operator_deployment_defaults() -> None:
    docs = rendered("defaults")
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod_spec = spec["template"]["spec"]
    assert pod_spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    container = _container(docs)
    assert container["image"] == "phiops-operator:0.1.0", "no registry host, appVersion tag"
    assert container["args"] == ["--metrics-port", "8080", "--liveness-port", "8081", "-A"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PHIOPS_EMBED_IMAGE"] == "phiops-embed:0.1.0"
    assert env["PHIOPS_FINETUNE_IMAGE"] == "phiops-finetune:0.1.0"
    assert env["PHIOPS_SERVE_IMAGE"] == "phiops-serve:0.1.0"
    assert env["PHIOPS_WORKER_LIMIT"] == "20"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "a writable /tmp beside the read-only root"
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= one(docs, "Service")["spec"]["selector"].items() | selector.items()
    assert one(docs, "Service")["spec"]["selector"] == selector


def test_operator_reads_the_environment_the_chart_sets() -> None:
    """Every PHIOPS_* variable the chart sets is one operator/phiops_operator/config.py reads."""
    config_source = (REPO / "operator" / "phiops_operator" / "config.py").read_text()
    env = {e["name"] for e in _container(rendered("defaults"))["env"]}
    for name in env:
        if name.startswith("PHIOPS_"):
            assert f'"{name}"' in config_source, f"the operator does not read {name}"


def test_operator_accepts_the_arguments_the_chart_passes() -> None:
    from phiops_operator.__main__ import parse_args

    default = parse_args(_container(rendered("defaults"))["args"])
    assert default.all_namespaces and default.metrics_port == 8080 and default.liveness_port == 8081
    namespaced = parse_args(_container(rendered("namespaced"))["args"])
    assert namespaced.namespace == ["team-a", "team-b"] and not namespaced.all_namespaces
    verbose = parse_args(_container(rendered("everything"))["args"])
    assert verbose.verbose and verbose.all_namespaces


def test_everything_values_reach_the_deployment() -> None:
    docs = rendered("everything")
    container = _container(docs)
    pod_spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert container["image"] == "registry.example.com/phiops/phiops-operator:0.1.0-rc.1"
    assert container["imagePullPolicy"] == "Always"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PHIOPS_SERVE_IMAGE"] == "registry.example.com/phiops/phiops-serve:0.1.0-rc.1"
    assert env["PHIOPS_WORKER_LIMIT"] == "8"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod_spec["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod_spec["affinity"]
    assert pod_spec["priorityClassName"] == "system-cluster-critical"
    template_meta = one(docs, "Deployment")["spec"]["template"]["metadata"]
    assert template_meta["annotations"] == {"example.com/team": "ml-platform"}
    assert template_meta["labels"]["example.com/cost-center"] == "ml"


def test_namespaced_mode_watches_the_release_namespace_when_none_is_listed() -> None:
    docs = [d for d in yaml.safe_load_all(template(sets=("rbac.scope=namespaced",))) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["-n", "phiops"]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "phiops"


def test_helm_test_hook_checks_health_through_the_service() -> None:
    docs = rendered("defaults")
    (pod,) = by_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    service = one(docs, "Service")
    # The test pod must not be an endpoint of the Service it checks.
    selector = service["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    script = container["args"][0]
    assert container["image"] == "phiops-operator:0.1.0"
    assert f"http://{service['metadata']['name']}.phiops.svc" in script
    assert ":8081/healthz" in script and ":8080/metrics" in script
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    compile(script, "helm-test", "exec")  # the script is valid Python


def test_helm_test_script_exits_non_zero_when_the_operator_does_not_answer(tmp_path: Path) -> None:
    import subprocess
    import sys

    (pod,) = by_kind(rendered("defaults"), "Pod")
    script = pod["spec"]["containers"][0]["args"][0]
    # Point it at a closed local port and make its retries instant.
    script = script.replace("http://phiops.phiops.svc", "http://127.0.0.1")
    script = script.replace(":8081/", ":9/").replace("time.sleep(3)", "time.sleep(0)")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "FAILED: http://127.0.0.1:9/healthz" in proc.stderr


# --- CRDs -----------------------------------------------------------------------------------


def _strip_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    crd = json.loads(json.dumps(crd))
    annotations = crd["metadata"].get("annotations") or {}
    annotations.pop("helm.sh/resource-policy", None)
    annotations.pop("argocd.argoproj.io/sync-wave", None)
    if not annotations:
        crd["metadata"].pop("annotations", None)
    labels = crd["metadata"]["labels"]
    for key in list(labels):
        if key.startswith("helm.sh/") or key in {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/component",
        }:
            labels.pop(key)
    return crd


def test_chart_crd_files_are_byte_copies_of_crds() -> None:
    source = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in sync.CRD_COPY.glob("*.yaml"))
    assert copies == source, "run `python -m tests.chart.sync`"
    for name in source:
        assert (sync.CRD_COPY / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/phiops/files/crds/{name} differs from crds/{name}: "
            "run `python -m tests.chart.sync`"
        )


@pytest.mark.parametrize("values", ["defaults", "everything"])
def test_rendered_crds_equal_crds_as_parsed_yaml(values: str) -> None:
    rendered_crds = {
        d["metadata"]["name"]: d for d in by_kind(rendered(values), "CustomResourceDefinition")
    }
    source = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        source[doc["metadata"]["name"]] = doc
    assert set(rendered_crds) == set(source)
    for name, doc in source.items():
        assert _strip_chart_metadata(rendered_crds[name]) == doc, name


def test_crds_are_kept_on_uninstall_by_default() -> None:
    for crd in by_kind(rendered("defaults"), "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    everything = by_kind(rendered("everything"), "CustomResourceDefinition")
    assert all(
        c["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1" for c in everything
    )
    unkept = [d for d in yaml.safe_load_all(template(sets=("crds.keep=false",))) if d]
    for crd in [d for d in unkept if d["kind"] == "CustomResourceDefinition"]:
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def test_crds_disabled_renders_none() -> None:
    assert not by_kind(rendered("no-crds"), "CustomResourceDefinition")
    assert one(rendered("no-crds"), "Deployment")


# --- generated files ------------------------------------------------------------------------


GENERATED: dict[str, Callable[[], dict[Path, str]]] = {
    "crd copies": sync.crd_files,
    "alerts.yaml": lambda: {sync.ALERTS: sync.alerts_file()},
    "dashboard.json": lambda: {sync.DASHBOARD: sync.dashboard_file()},
    "gitops fixtures": sync.fixture_files,
}


@pytest.mark.parametrize("what", sorted(GENERATED))
def test_generated_files_are_current(what: str) -> None:
    stale = [
        str(path.relative_to(REPO))
        for path, text in GENERATED[what]().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"stale: {stale}; run `python -m tests.chart.sync`"


def test_no_stray_generated_files() -> None:
    assert sync.stray_files() == []


# --- NOTES.txt ------------------------------------------------------------------------------


def _notes(tmp_path: Path, *sets: str) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips NOTES: render it from a
    copy of the chart in which it is a ConfigMap's data)."""
    import shutil

    chart = tmp_path / "phiops"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" }}' + notes + "{{- end }}"
    )
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )
    args = ["template", "phiops", str(chart), "-n", "phiops", "--show-only", "templates/notes.yaml"]
    for item in sets:
        args += ["--set", item]
    (doc,) = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    text: str = doc["data"]["notes"]
    return text


def test_notes(tmp_path: Path) -> None:
    default = _notes(tmp_path / "a")
    assert "phiops resources in every namespace" in default
    assert "kept on `helm uninstall`" in default
    assert "helm test phiops -n phiops" in default
    assert "kubectl delete knowledgebases,finetunejobs,phideployments --all -A" in default
    namespaced = _notes(
        tmp_path / "b",
        "rbac.scope=namespaced",
        "watchNamespaces={team-a,team-b}",
        "crds.enabled=false",
    )
    assert "phiops resources in: team-a, team-b" in namespaced
    assert "crds.enabled=false" in namespaced
