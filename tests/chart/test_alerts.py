"""The shipped alert rules: valid for promtool, unit-tested with `promtool test rules` (every
alert fires on series that should fire it and stays silent on others), each with severity,
summary, description and a runbook that exists; only metrics of the contract (phiops' own and
the vLLM engine series the server passes on), and only labels those series carry; the
dashboard's queries are valid PromQL over the same metrics."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import sync
from tests.chart.tools import HERE, INSTALL_HINT, REPO, promtool_path, run

RULES_TEST = HERE / "rules_test.yaml"
ALERTS_DOC = REPO / "docs" / "operations" / "alerts.md"

ALERTS = {
    "PhiopsOperatorDown",
    "PhiopsReconcileErrors",
    "PhiopsOperatorRestarting",
    "PhiopsKnowledgeBaseSyncFailing",
    "PhiopsKnowledgeBaseStale",
    "PhiopsFineTuneJobFailed",
    "PhiopsFineTuneJobStuck",
    "PhiopsDeploymentUnavailable",
    "PhiopsInferenceLatencyHigh",
    "PhiopsInferenceQueueBacklog",
    "PhiopsKVCacheSaturated",
    "PhiopsInferencePreempting",
}

# The metrics contract (name -> type, labels): the operator's (operator/phiops_operator/
# metrics.py), the inference server's, and vLLM's engine series the server passes on at its
# /metrics (vllm/v1/metrics/loggers.py; counters by their exposed name, with _total). Rules
# and dashboard use these and no other phiops_* or vllm:*.
NS_NAME = ("namespace", "name")
ENGINE = ("model_name", "engine")
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "phiops_reconcile_total": ("counter", ("kind", "result")),
    "phiops_reconcile_duration_seconds": ("histogram", ("kind", "result")),
    "phiops_operator_restarts_total": ("counter", ()),
    "phiops_resource_ready": ("gauge", ("kind", *NS_NAME)),
    "phiops_knowledge_base_documents": ("gauge", NS_NAME),
    "phiops_knowledge_base_chunks": ("gauge", NS_NAME),
    "phiops_knowledge_base_last_successful_sync_timestamp_seconds": ("gauge", NS_NAME),
    "phiops_knowledge_base_sync_duration_seconds": ("gauge", NS_NAME),
    "phiops_knowledge_base_sync_failures_total": ("counter", (*NS_NAME, "reason")),
    "phiops_knowledge_base_sync_interval_seconds": ("gauge", NS_NAME),
    "phiops_fine_tune_job_phase": ("gauge", (*NS_NAME, "phase")),
    "phiops_fine_tune_job_duration_seconds": ("gauge", NS_NAME),
    "phiops_fine_tune_job_final_loss": ("gauge", NS_NAME),
    "phiops_fine_tune_job_restarts": ("gauge", (*NS_NAME, "reason")),
    "phiops_fine_tune_job_last_progress_timestamp_seconds": ("gauge", NS_NAME),
    "phiops_deployment_replicas": ("gauge", NS_NAME),
    "phiops_deployment_ready_replicas": ("gauge", NS_NAME),
    "phiops_deployment_adapters": ("gauge", NS_NAME),
    "phiops_deployment_adapters_loaded": ("gauge", NS_NAME),
    "phiops_serve_requests_total": ("counter", ("model", "endpoint", "code")),
    "phiops_serve_request_duration_seconds": ("histogram", ("model",)),
    "phiops_serve_time_to_first_token_seconds": ("histogram", ("model",)),
    "phiops_serve_model_loaded": ("gauge", ("model",)),
    "vllm:num_requests_running": ("gauge", ENGINE),
    "vllm:num_requests_waiting": ("gauge", ENGINE),
    "vllm:kv_cache_usage_perc": ("gauge", ENGINE),
    "vllm:prefix_cache_queries_total": ("counter", ENGINE),
    "vllm:prefix_cache_hits_total": ("counter", ENGINE),
    "vllm:num_preemptions_total": ("counter", ENGINE),
    "vllm:lora_requests_info": (
        "gauge",
        ("max_lora", "running_lora_adapters", "waiting_lora_adapters"),
    ),
    "vllm:time_to_first_token_seconds": ("histogram", ENGINE),
    "vllm:inter_token_latency_seconds": ("histogram", ENGINE),
    "vllm:e2e_request_latency_seconds": ("histogram", ENGINE),
}
SERVER_METRICS = {m for m in CONTRACT if m.startswith("phiops_serve_")}
ENGINE_METRICS = {m for m in CONTRACT if m.startswith("vllm:")}
# Labels Prometheus adds to a scraped series (the operator's own namespace/name are honored).
TARGET_LABELS = {"job", "instance", "namespace", "pod"}


def _promtool() -> str:
    found = promtool_path()
    if found is None:
        pytest.skip(f"promtool is not installed: {INSTALL_HINT}")
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(sync.ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    out = run([_promtool(), "check", "rules", str(sync.ALERTS)]).stdout
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass() -> None:
    proc = run([_promtool(), "test", "rules", str(RULES_TEST)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_promtool_tests_fail_when_an_alert_misbehaves(tmp_path: Path) -> None:
    """The unit tests have teeth: with one rule that never fires, they fail."""
    doc = yaml.safe_load(sync.ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "PhiopsFineTuneJobFailed":
                rule["expr"] = 'phiops_fine_tune_job_phase{phase="Failed"} == 2'
    broken = tmp_path / "alerts.yaml"
    broken.write_text(yaml.safe_dump(doc))
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["rule_files"] = [str(broken)]
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    proc = run([_promtool(), "test", "rules", str(test_file)], check=False)
    assert proc.returncode != 0
    assert "PhiopsFineTuneJobFailed" in proc.stdout + proc.stderr


def test_every_alert_is_shipped_with_labels_and_annotations() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    anchors = _doc_anchors()
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip() and annotations["description"].strip()
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == "docs/operations/alerts.md", name
        assert anchor == name.lower() and anchor in anchors, f"no runbook section for {name}"


def _doc_anchors() -> set[str]:
    """GitHub-style anchors of the headings of docs/operations/alerts.md."""
    anchors = set()
    for line in ALERTS_DOC.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_fires_and_stays_silent_in_the_unit_tests() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())
    assert tests["rule_files"] == ["../../charts/phiops/files/alerts.yaml"]
    fired: set[str] = set()
    silent: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
            for alert in case["exp_alerts"]:
                # the severity the rule gives, not just any
                assert alert["exp_labels"]["severity"] in {"critical", "warning"}
    assert fired == ALERTS, f"never seen firing: {sorted(ALERTS - fired)}"
    assert silent == ALERTS, f"never seen silent: {sorted(ALERTS - silent)}"


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(phiops_[a-z0-9_]+|vllm:[a-z0-9_:]+)", expr))
    out = set()
    for name in names:
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and base in CONTRACT and CONTRACT[base][0] == "histogram":
                name = base
        out.add(name)
    return out


def test_rules_use_only_contract_metrics() -> None:
    used = set().union(*(_metric_names(r["expr"]) for r in _rules()))
    assert used <= set(CONTRACT), f"not in the metrics contract: {sorted(used - set(CONTRACT))}"


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")


def _labels_used(expr: str) -> set[str]:
    """Labels an expression groups, joins or selects by."""
    used = set()
    for group in _GROUPING.findall(expr):
        used |= {name.strip() for name in group.split(",") if name.strip()}
    for matchers in _MATCHERS.findall(expr):
        used |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return used


def _labels_available(expr: str) -> set[str]:
    """Labels the contract's series of an expression carry, with the scrape's and `le`."""
    names = _metric_names(expr)
    available = set(TARGET_LABELS).union(*(CONTRACT[n][1] for n in names if n in CONTRACT))
    if any(CONTRACT.get(n, ("",))[0] == "histogram" for n in names):
        available.add("le")
    return available


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_queries_use_only_labels_their_series_carry(source: str) -> None:
    """`model` on a vllm:* series (which has `model_name`) would group everything into one
    series, silently: labels in by/on/matchers must be labels of the series used."""
    if source == "rules":
        exprs = [r["expr"] for r in _rules()]
    else:
        exprs = [t["expr"] for p in sync.dashboard()["panels"] for t in p.get("targets", [])]
    for expr in exprs:
        unknown = _labels_used(expr) - _labels_available(expr)
        assert not unknown, f"labels {sorted(unknown)} on none of the series of: {expr}"


def test_operator_metrics_match_the_contract() -> None:
    """Metrics the operator registers have the contract's names, types and labels; those it
    does not register yet are named in a skip."""
    from phiops_operator import metrics
    from prometheus_client.metrics import MetricWrapperBase

    registered: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = str(value._type)
            name = value._name + ("_total" if kind == "counter" else "")
            registered[name] = (kind, tuple(value._labelnames))
    assert "phiops_reconcile_total" in registered
    for name, (kind, labels) in sorted(registered.items()):
        if name in CONTRACT:
            want_kind, want_labels = CONTRACT[name]
            assert kind == want_kind, f"{name} is a {kind}, the contract says {want_kind}"
            assert set(labels) == set(want_labels), f"{name} labels {labels} != {want_labels}"
    missing = sorted(set(CONTRACT) - SERVER_METRICS - ENGINE_METRICS - set(registered))
    if missing:
        pytest.skip(f"contract metrics the operator does not register yet: {missing}")


SERVER_METRICS_SOURCE = REPO / "images" / "serve" / "phiops_serve" / "metrics.py"
METRIC_DEFINITION = re.compile(
    r"(Counter|Gauge|Histogram)\(\s*\"(phiops_serve_\w+)\",\s*(?:\"[^\"]*\"\s*)+,\s*\[([^\]]*)\]"
)


def test_server_metrics_match_the_contract() -> None:
    """The inference server defines the contract's phiops_serve_* metrics (read from its
    source: importing it needs torch)."""
    if not SERVER_METRICS_SOURCE.exists():
        pytest.skip(f"{SERVER_METRICS_SOURCE.relative_to(REPO)} does not exist yet")
    defined = {
        name: (kind.lower(), tuple(re.findall(r"\"(\w+)\"", labels)))
        for kind, name, labels in METRIC_DEFINITION.findall(SERVER_METRICS_SOURCE.read_text())
    }
    for name in sorted(SERVER_METRICS):
        assert name in defined, f"the server does not define {name}"
        kind, labels = defined[name]
        assert kind == CONTRACT[name][0], f"{name} is a {kind}"
        assert set(labels) == set(CONTRACT[name][1]), f"{name} labels {labels}"


def _vllm_loggers() -> Path:
    """vLLM's Prometheus logger, found without importing vLLM (that needs torch)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed (the serve dependency group)")
    return Path(spec.origin).parent / "v1" / "metrics" / "loggers.py"


VLLM_METRIC_DEFINITION = re.compile(
    r"self\._(gauge|counter|histogram)_cls\(\s*name=\"(vllm:\w+)\"(.*?)\n\s*\)\n", re.S
)


def _vllm_labels(body: str, source: str) -> tuple[str, ...]:
    """The label names of one vLLM metric definition: the engine's (`labelnames`), plus any
    listed, or a list of strings and `self.labelname_*` attributes."""
    (base,) = re.findall(r"^\s*labelnames = \[([^\]]*)\]", source, re.M)
    attributes = dict(re.findall(r"self\.(labelname_\w+) = \"(\w+)\"", source))

    def names(listed: str) -> list[str]:
        out = []
        for item in (i.strip() for i in listed.split(",") if i.strip()):
            if item.startswith("self."):
                out.append(attributes[item.removeprefix("self.")])
            else:
                out.append(item.strip("\"'"))
        return out

    found = re.search(r"labelnames=(labelnames(?:\s*\+\s*\[([^\]]*)\])?|\[([^\]]*)\])", body, re.S)
    assert found, f"no labelnames in {body!r}"
    if found.group(1).startswith("labelnames"):
        return tuple(names(base) + names(found.group(2) or ""))
    return tuple(names(found.group(3)))


def test_engine_metrics_match_the_contract() -> None:
    """The installed vLLM defines the contract's vllm:* series with its types and labels (read
    from its source, as the server's are)."""
    source = _vllm_loggers().read_text()
    defined = {}
    for kind, name, body in VLLM_METRIC_DEFINITION.findall(source):
        exposed = name.removesuffix("_total") + "_total" if kind == "counter" else name
        defined[exposed] = (kind, _vllm_labels(body, source))
    assert defined.get("vllm:num_requests_running") == ("gauge", ("model_name", "engine"))
    for name in sorted(ENGINE_METRICS):
        assert name in defined, f"vLLM does not define {name}"
        kind, labels = defined[name]
        assert kind == CONTRACT[name][0], f"{name} is a {kind}"
        assert set(labels) == set(CONTRACT[name][1]), f"{name} labels {labels}"


def test_dashboard_queries_are_valid_promql_over_contract_metrics(tmp_path: Path) -> None:
    board = sync.dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used <= set(CONTRACT)
    # every figure of the contract has a panel
    assert set(CONTRACT) <= used, f"no panel for {sorted(set(CONTRACT) - used)}"
    # promtool parses recording rules: one per query, with Grafana's variables filled in
    rules = [
        {
            "record": f"phiops:dashboard_query:{n}",
            "expr": e.replace("$namespace", ".*").replace("$job", "phiops-operator"),
        }
        for n, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert "SUCCESS" in run([_promtool(), "check", "rules", str(path)]).stdout


def test_dashboard_shape() -> None:
    board = sync.dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] == "phiops-overview"
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace"} <= names
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and panel["description"]
