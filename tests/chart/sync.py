"""Keeps the chart's generated files in step with their sources.

- `charts/phiops/files/crds/*.yaml`: exact copies of `crds/*.yaml` (generated from the models by
  `make crds`); the chart's CRD template renders them.
- `charts/phiops/files/alerts.yaml`: the chart's alert rules (templates/_alerts.tpl) rendered
  with the default values, as a plain Prometheus rule file.
- `charts/phiops/files/dashboard.json`: the Grafana dashboard, built from the panel table below.
- `tests/chart/fixtures/*.json`: phiops objects whose conditions are made by the operator's own
  helpers (phiops_operator.conditions), for the Argo CD health and kstatus tests.

    python -m tests.chart.sync          # rewrite them
    python -m tests.chart.sync --check  # name the stale ones and exit 1 (tests/chart does too)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.chart.tools import CHART, HERE, REPO, helm

CRD_SOURCE = REPO / "crds"
CRD_COPY = CHART / "files" / "crds"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
FIXTURES = HERE / "fixtures"
NOW = "2025-01-01T00:00:00Z"


# --- CRDs ---------------------------------------------------------------------------------


def crd_files() -> dict[Path, str]:
    return {CRD_COPY / p.name: p.read_text() for p in sorted(CRD_SOURCE.glob("*.yaml"))}


# --- alerts -------------------------------------------------------------------------------


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as a person would write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def render_alert_groups() -> dict[str, Any]:
    """The `spec` of the chart's PrometheusRule with default values."""
    out = helm(
        "template",
        "phiops",
        str(CHART),
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d]
    spec: dict[str, Any] = rule["spec"]
    return spec


def alerts_file() -> str:
    header = (
        "# phiops alert rules for Prometheus, rendered from charts/phiops/templates/_alerts.tpl\n"
        "# with the chart's default values by `python -m tests.chart.sync`. Do not edit.\n"
        "# Load it with `rule_files:`; scrape the operator as job `phiops-operator` with\n"
        "# `honor_labels: true` (docs/operations/alerts.md).\n"
    )
    body = yaml.dump(
        render_alert_groups(), Dumper=_BlockDumper, sort_keys=False, width=1000, allow_unicode=True
    )
    return header + body


# --- dashboard ------------------------------------------------------------------------------

NS = 'namespace=~"$namespace"'


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
    }


# (row title, [(panel title, unit, [(expr, legend)], description)])
PANELS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    (
        "Operator",
        [
            (
                "Reconciles by kind and result",
                "ops",
                [
                    (
                        "sum by (kind, result) (rate(phiops_reconcile_total[5m]))",
                        "{{kind}} {{result}}",
                    )
                ],
                "Reconciles per second; results: success, invalid, retry, error.",
            ),
            (
                "Reconcile duration (p95)",
                "s",
                [
                    (
                        "histogram_quantile(0.95, sum by (kind, le) "
                        "(rate(phiops_reconcile_duration_seconds_bucket[5m])))",
                        "{{kind}}",
                    )
                ],
                "95th percentile time of one reconcile, by kind.",
            ),
            (
                "Controller restarts in-process",
                "short",
                [("sum(increase(phiops_operator_restarts_total[30m]))", "restarts in 30m")],
                "Times Kopf stopped on an error and the operator started it again in its "
                "process (alert PhiopsOperatorRestarting at 3 in 30m).",
            ),
            (
                "Resources by kind and Ready state",
                "short",
                [
                    (f"sum by (kind) (phiops_resource_ready{{{NS}}} == 1)", "{{kind}} ready"),
                    (
                        f"count by (kind) (phiops_resource_ready{{{NS}}} == 0)",
                        "{{kind}} not ready",
                    ),
                ],
                "phiops resources whose Ready condition is True, and the others.",
            ),
            (
                "Operator up",
                "short",
                [('max(up{job=~"$job"})', "up")],
                "1 while Prometheus scrapes the operator.",
            ),
        ],
    ),
    (
        "Knowledge bases",
        [
            (
                "Documents",
                "short",
                [(f"phiops_knowledge_base_documents{{{NS}}}", "{{namespace}}/{{name}}")],
                "Documents after the last successful sync.",
            ),
            (
                "Chunks",
                "short",
                [(f"phiops_knowledge_base_chunks{{{NS}}}", "{{namespace}}/{{name}}")],
                "Chunks in the collection after the last successful sync.",
            ),
            (
                "Time since the last successful sync",
                "s",
                [
                    (
                        "time() - phiops_knowledge_base_last_successful_sync_timestamp_seconds"
                        f"{{{NS}}}",
                        "{{namespace}}/{{name}}",
                    ),
                    (
                        f"phiops_knowledge_base_sync_interval_seconds{{{NS}}}",
                        "{{namespace}}/{{name}} interval",
                    ),
                ],
                "Age of the last successful sync, beside the sync interval.",
            ),
            (
                "Sync failures (1h)",
                "short",
                [
                    (
                        "sum by (namespace, name, reason) (increase("
                        f"phiops_knowledge_base_sync_failures_total{{{NS}}}[1h]))",
                        "{{namespace}}/{{name}} {{reason}}",
                    )
                ],
                "Failed syncs in the last hour, by reason.",
            ),
            (
                "Sync duration",
                "s",
                [
                    (
                        f"phiops_knowledge_base_sync_duration_seconds{{{NS}}}",
                        "{{namespace}}/{{name}}",
                    )
                ],
                "Duration of the last successful sync.",
            ),
        ],
    ),
    (
        "Fine-tuning",
        [
            (
                "Fine-tune jobs by phase",
                "short",
                [(f"sum by (phase) (phiops_fine_tune_job_phase{{{NS}}})", "{{phase}}")],
                "Jobs in each phase.",
            ),
            (
                "Restarts by reason",
                "short",
                [
                    (
                        f"sum by (reason) (phiops_fine_tune_job_restarts{{{NS}}})",
                        "{{reason}}",
                    )
                ],
                "Training pods that ended before their job finished, by reason.",
            ),
            (
                "Training time",
                "s",
                [
                    (
                        f"phiops_fine_tune_job_duration_seconds{{{NS}}}",
                        "{{namespace}}/{{name}}",
                    )
                ],
                "Training time so far, or in total once a job ended.",
            ),
            (
                "Time since the last progress (running jobs)",
                "s",
                [
                    (
                        "(time() - phiops_fine_tune_job_last_progress_timestamp_seconds"
                        f"{{{NS}}}) and on (namespace, name) "
                        'phiops_fine_tune_job_phase{phase="Running"} == 1',
                        "{{namespace}}/{{name}}",
                    )
                ],
                "How long since a running job last reported training progress.",
            ),
            (
                "Final loss",
                "short",
                [
                    (
                        f"phiops_fine_tune_job_final_loss{{{NS}}}",
                        "{{namespace}}/{{name}}",
                    )
                ],
                "Training loss of finished jobs.",
            ),
        ],
    ),
    (
        "Serving",
        [
            (
                "Ready replicas",
                "short",
                [
                    (
                        f"phiops_deployment_ready_replicas{{{NS}}}",
                        "{{namespace}}/{{name}} ready",
                    ),
                    (
                        f"phiops_deployment_replicas{{{NS}}}",
                        "{{namespace}}/{{name}} wanted",
                    ),
                ],
                "Ready server replicas of each PhiDeployment, beside the replicas it wants.",
            ),
            (
                "Adapters loaded",
                "short",
                [
                    (
                        f"phiops_deployment_adapters_loaded{{{NS}}}",
                        "{{namespace}}/{{name}} loaded",
                    ),
                    (
                        f"phiops_deployment_adapters{{{NS}}}",
                        "{{namespace}}/{{name}} declared",
                    ),
                ],
                "Adapters the servers loaded, beside those the PhiDeployment declares.",
            ),
            (
                "Requests by model and code",
                "reqps",
                [
                    (
                        f"sum by (model, code) (rate(phiops_serve_requests_total{{{NS}}}[5m]))",
                        "{{model}} {{code}}",
                    )
                ],
                "Inference requests per second.",
            ),
            (
                "Request duration (p50, p95)",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (model, le) (rate("
                        f"phiops_serve_request_duration_seconds_bucket{{{NS}}}[5m])))",
                        "{{model}} p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (model, le) (rate("
                        f"phiops_serve_request_duration_seconds_bucket{{{NS}}}[5m])))",
                        "{{model}} p95",
                    ),
                ],
                "Inference request duration percentiles.",
            ),
            (
                "Time to first token (p95)",
                "s",
                [
                    (
                        "histogram_quantile(0.95, sum by (model, le) (rate("
                        f"phiops_serve_time_to_first_token_seconds_bucket{{{NS}}}[5m])))",
                        "{{model}}",
                    )
                ],
                "95th percentile time until the first streamed token.",
            ),
            (
                "Models loaded",
                "short",
                [(f"phiops_serve_model_loaded{{{NS}}}", "{{namespace}}/{{pod}} {{model}}")],
                "1 for each model (and adapter) a server has loaded.",
            ),
        ],
    ),
    (
        "Inference engine (vLLM)",
        [
            (
                "Requests running and waiting",
                "short",
                [
                    (
                        f"sum by (namespace, pod) (vllm:num_requests_running{{{NS}}})",
                        "{{namespace}}/{{pod}} running",
                    ),
                    (
                        f"sum by (namespace, pod) (vllm:num_requests_waiting{{{NS}}})",
                        "{{namespace}}/{{pod}} waiting",
                    ),
                ],
                "Requests in each server pod's running batch (at most engine.maxNumSeqs) and "
                "in vLLM's queue; a queue longer than the batch for long: "
                "PhiopsInferenceQueueBacklog.",
            ),
            (
                "KV cache usage",
                "percentunit",
                [
                    (
                        f"max by (namespace, pod) (vllm:kv_cache_usage_perc{{{NS}}})",
                        "{{namespace}}/{{pod}}",
                    )
                ],
                "Share of each pod's KV cache held by running requests (cached prefixes nothing "
                "uses count as free). Near 100%: requests wait and get preempted "
                "(PhiopsKVCacheSaturated).",
            ),
            (
                "Preemptions",
                "ops",
                [
                    (
                        f"sum by (namespace, pod) (rate(vllm:num_preemptions_total{{{NS}}}[5m]))",
                        "{{namespace}}/{{pod}}",
                    )
                ],
                "Requests preempted per second: their KV cache is dropped and computed again "
                "(PhiopsInferencePreempting).",
            ),
            (
                "Prefix cache hit rate",
                "percentunit",
                [
                    (
                        "sum by (namespace, pod) (rate("
                        f"vllm:prefix_cache_hits_total{{{NS}}}[5m])) / (sum by (namespace, pod) "
                        f"(rate(vllm:prefix_cache_queries_total{{{NS}}}[5m])) > 0)",
                        "{{namespace}}/{{pod}}",
                    )
                ],
                "Share of prompt tokens found in the prefix cache (system prompt, retrieved "
                "context, earlier turns) instead of computed, over 5 minutes.",
            ),
            (
                "Engine time to first token (p95)",
                "s",
                [
                    (
                        "histogram_quantile(0.95, sum by (namespace, model_name, le) (rate("
                        f"vllm:time_to_first_token_seconds_bucket{{{NS}}}[5m])))",
                        "{{namespace}} {{model_name}}",
                    )
                ],
                "95th percentile time from a request reaching vLLM to its first token: queue "
                "and prefill (retrieval not included; see Time to first token).",
            ),
            (
                "Inter-token latency (p50, p95)",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (namespace, model_name, le) (rate("
                        f"vllm:inter_token_latency_seconds_bucket{{{NS}}}[5m])))",
                        "{{namespace}} {{model_name}} p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (namespace, model_name, le) (rate("
                        f"vllm:inter_token_latency_seconds_bucket{{{NS}}}[5m])))",
                        "{{namespace}} {{model_name}} p95",
                    ),
                ],
                "Time between two generated tokens of a request: grows with the batch.",
            ),
            (
                "Engine request latency (p50, p95)",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (namespace, model_name, le) (rate("
                        f"vllm:e2e_request_latency_seconds_bucket{{{NS}}}[5m])))",
                        "{{namespace}} {{model_name}} p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (namespace, model_name, le) (rate("
                        f"vllm:e2e_request_latency_seconds_bucket{{{NS}}}[5m])))",
                        "{{namespace}} {{model_name}} p95",
                    ),
                ],
                "Time from a request reaching vLLM to its last token.",
            ),
            (
                "LoRA adapters running and waiting",
                "short",
                [
                    (
                        "count by (namespace, pod, running_lora_adapters, waiting_lora_adapters) "
                        f"(vllm:lora_requests_info{{{NS}}} == on (namespace, pod) group_left "
                        f"max by (namespace, pod) (vllm:lora_requests_info{{{NS}}}))",
                        "{{namespace}}/{{pod}} running: {{running_lora_adapters}} "
                        "waiting: {{waiting_lora_adapters}}",
                    )
                ],
                "Adapters with requests in each pod's batch and queue, as vLLM last reported. "
                "One that waits and never runs lacks a LoRA slot (engine.maxLoras). Requests "
                "per adapter: Requests by model and code.",
            ),
        ],
    ),
]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row_title, row_panels in PANELS:
        panels.append(
            {
                "type": "row",
                "id": next_id,
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y = next_id + 1, y + 1
        for index, (title, unit, queries, description) in enumerate(row_panels):
            panels.append(
                {
                    "type": "timeseries",
                    "id": next_id,
                    "title": title,
                    "description": description,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": y + 8 * (index // 2)},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        _target(expr, legend, chr(ord("A") + n))
                        for n, (expr, legend) in enumerate(queries)
                    ],
                }
            )
            next_id += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    variables = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        {
            "name": "namespace",
            "label": "Namespace",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": "label_values(phiops_resource_ready, namespace)",
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "hide": 0,
        },
        {
            "name": "job",
            "label": "Operator job",
            "type": "constant",
            "query": "phiops-operator",
            "hide": 2,
        },
    ]
    return {
        "uid": "phiops-overview",
        "title": "phiops",
        "description": "phiops operator, knowledge bases, fine-tuning and serving.",
        "tags": ["phiops"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboard_file() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


# --- fixtures -------------------------------------------------------------------------------

KIND_PLURALS = {
    "KnowledgeBase": "knowledgebases",
    "FineTuneJob": "finetunejobs",
    "PhiDeployment": "phideployments",
}


def _object(
    kind: str,
    name: str,
    generation: int,
    status: dict[str, Any] | None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "generation": generation,
            "uid": "00000000-0000-0000-0000-000000000001",
            "creationTimestamp": NOW,
        },
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def fixture_objects() -> dict[str, dict[str, Any]]:
    """name -> object. Statuses come from the operator's own status functions
    (phiops_operator.status.<kind>.compute, conditions.merge, status.common.invalid_spec), so a
    change of their shape shows up here, and the health and kstatus tests judge it again."""
    from phiops_operator import conditions
    from phiops_operator.adapter_sync import AdapterState
    from phiops_operator.status import fine_tune_job as ftj
    from phiops_operator.status import knowledge_base as kb
    from phiops_operator.status import phi_deployment as phid
    from phiops_operator.status.common import invalid_spec

    def status(
        update: tuple[list[conditions.Observation], dict[str, Any]], generation: int
    ) -> dict[str, Any]:
        observed, fields = update
        merged = conditions.merge(None, observed, generation, now=NOW)
        return {**fields, "observedGeneration": generation, "conditions": merged}

    no_fields: dict[str, Any] = {}
    invalid = (invalid_spec("spec.sources[0]: exactly one of configMap, pvc, http, git"), no_fields)
    out: dict[str, dict[str, Any]] = {}

    # KnowledgeBase
    def kb_obs(**kw: Any) -> tuple[list[conditions.Observation], dict[str, Any]]:
        return kb.compute(
            kb.KnowledgeBaseObservation(
                store_uri="http://handbook-store.team-a.svc:19530", alias="handbook", **kw
            )
        )

    def sync(state: Any) -> kb.SyncObservation:
        finished = NOW if state == "succeeded" else None
        return kb.SyncObservation(
            "3f2a", [kb.ShardObservation("handbook-sync-3f2a-0", state, finished=finished)]
        )

    synced = kb_obs(current=sync("succeeded"), last_success=sync("succeeded"))
    out["knowledgebase-ready"] = _object("KnowledgeBase", "handbook", 2, status(synced, 2))
    out["knowledgebase-syncing"] = _object(
        "KnowledgeBase", "handbook", 2, status(kb_obs(current=sync("active")), 2)
    )
    out["knowledgebase-sync-failed"] = _object(
        "KnowledgeBase", "handbook", 2, status(kb_obs(current=sync("failed")), 2)
    )
    out["knowledgebase-store-down"] = _object(
        "KnowledgeBase",
        "handbook",
        1,
        status(kb_obs(store_unreachable="cannot connect to Milvus at milvus.db:19530"), 1),
    )
    out["knowledgebase-invalid"] = _object("KnowledgeBase", "handbook", 3, status(invalid, 3))
    # Ready at generation 1, edited since: the operator has not seen generation 2 yet.
    out["knowledgebase-generation-unobserved"] = _object(
        "KnowledgeBase", "handbook", 2, status(synced, 1)
    )
    out["knowledgebase-new"] = _object("KnowledgeBase", "handbook", 1, None)

    # FineTuneJob
    def ftj_obs(**kw: Any) -> tuple[list[conditions.Observation], dict[str, Any]]:
        return ftj.compute(
            ftj.FineTuneObservation(spec_hash="5e1f", backoff_limit=2, estimate_bytes=6 << 30, **kw)
        )

    preflight = ftj.StepObservation("support-tone-preflight", "succeeded", finished=NOW)
    attempt = ftj.StepObservation(
        "support-tone-train-1", "active", started=NOW, spec_hash="5e1f", pods=1
    )
    done = ftj.StepObservation(
        "support-tone-train-1", "succeeded", started=NOW, finished=NOW, spec_hash="5e1f", pods=1
    )
    out["finetunejob-validating"] = _object("FineTuneJob", "support-tone", 1, status(ftj_obs(), 1))
    out["finetunejob-running"] = _object(
        "FineTuneJob",
        "support-tone",
        1,
        status(ftj_obs(preflight=preflight, attempts=[attempt]), 1),
    )
    out["finetunejob-succeeded"] = _object(
        "FineTuneJob", "support-tone", 1, status(ftj_obs(preflight=preflight, attempts=[done]), 1)
    )
    bad_dataset = ftj.StepObservation("support-tone-preflight", "failed", finished=NOW)
    out["finetunejob-invalid-dataset"] = _object(
        "FineTuneJob", "support-tone", 1, status(ftj_obs(preflight=bad_dataset), 1)
    )
    out["finetunejob-input-missing"] = _object(
        "FineTuneJob",
        "support-tone",
        1,
        status(
            ftj_obs(missing_inputs=["ConfigMap support-dataset (spec.dataset.configMap.name)"]), 1
        ),
    )
    # Phase alone (no conditions, as an older operator might leave it): the phase decides.
    out["finetunejob-failed-phase-only"] = _object(
        "FineTuneJob", "support-tone", 1, {"observedGeneration": 1, "phase": "Failed"}
    )
    out["finetunejob-new"] = _object("FineTuneJob", "support-tone", 1, None)

    # PhiDeployment
    def rollout(ready: int, current: bool = True, stuck: str | None = None) -> phid.Rollout:
        return phid.Rollout(
            desired=2, replicas=2, ready=ready, updated=2, current=current, stuck=stuck
        )

    def phid_obs(**kw: Any) -> tuple[list[conditions.Observation], dict[str, Any]]:
        base: dict[str, Any] = {
            "selector": "app.kubernetes.io/instance=support-bot",
            "endpoint": "http://support-bot-server.team-a.svc:8000/v1",
            "adapters": (),
            "knowledge_base": None,
            "collection": None,
            "blocked": (),
            "waiting": (),
            "rollout": rollout(2),
        }
        return phid.compute(phid.DeploymentObservation(**(base | kw)))

    adapter_failed = phid.Dependency(
        "adapter", "adapter tone: FineTuneJob support-tone failed", failed=True
    )
    adapter_training = phid.Dependency(
        "adapter", "adapter tone: FineTuneJob support-tone is Running"
    )
    out["phideployment-serving"] = _object("PhiDeployment", "support-bot", 4, status(phid_obs(), 4))
    out["phideployment-rolling-out"] = _object(
        "PhiDeployment", "support-bot", 4, status(phid_obs(rollout=rollout(1, current=False)), 4)
    )
    out["phideployment-serving-previous"] = _object(
        "PhiDeployment", "support-bot", 4, status(phid_obs(waiting=(adapter_training,)), 4)
    )
    out["phideployment-adapter-failed"] = _object(
        "PhiDeployment",
        "support-bot",
        4,
        status(phid_obs(blocked=(adapter_failed,), rollout=None), 4),
    )
    # The base (and any ready adapter) serves while a declared adapter's job still trains.
    training_view = phid.AdapterView(
        "tone", "fineTuneJob/support-tone", None, served=False, waiting=adapter_training
    )
    out["phideployment-adapter-training"] = _object(
        "PhiDeployment",
        "support-bot",
        4,
        status(phid_obs(blocked=(adapter_training,), adapters=(training_view,)), 4),
    )
    # Every ready pod refused to load an adapter (a bad folder): the base serves, not it.
    refused = phid.AdapterView(
        "tone",
        "fineTuneJob/support-tone",
        "ab" * 32,
        served=True,
        state=AdapterState(2, 0, 0, error="support-bot-server-x: not a LoRA adapter"),
    )
    out["phideployment-adapter-load-failed"] = _object(
        "PhiDeployment", "support-bot", 4, status(phid_obs(adapters=(refused,)), 4)
    )
    out["phideployment-rollout-stuck"] = _object(
        "PhiDeployment",
        "support-bot",
        4,
        status(phid_obs(rollout=rollout(1, stuck="pod support-bot-server-x: CrashLoopBackOff")), 4),
    )
    out["phideployment-invalid"] = _object("PhiDeployment", "support-bot", 5, status(invalid, 5))
    out["phideployment-generation-unobserved"] = _object(
        "PhiDeployment", "support-bot", 5, status(phid_obs(), 4)
    )
    return out


def fixture_files() -> dict[Path, str]:
    return {
        FIXTURES / f"{name}.json": json.dumps(obj, indent=2, sort_keys=True) + "\n"
        for name, obj in fixture_objects().items()
    }


# --- all ----------------------------------------------------------------------------------


def generated_files() -> dict[Path, str]:
    return {
        **crd_files(),
        ALERTS: alerts_file(),
        DASHBOARD: dashboard_file(),
        **fixture_files(),
    }


def stray_files() -> list[Path]:
    """Files in the generated folders that no source produces any more."""
    wanted = set(generated_files())
    found = [*CRD_COPY.glob("*.yaml"), *FIXTURES.glob("*.json")]
    return sorted(p for p in found if p not in wanted)


def stale_files() -> list[Path]:
    return [
        path
        for path, text in generated_files().items()
        if not path.exists() or path.read_text() != text
    ] + stray_files()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chart.sync", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(REPO)}")
        return 1 if stale else 0
    for path in stray_files():
        path.unlink()
        print(f"removed {path.relative_to(REPO)}")
    for path, text in generated_files().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
