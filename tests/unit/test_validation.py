"""Validation before anything is created: name limits derived from the builders, and the
spec's cross-field rules naming the exact field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from phiops_operator.builders import fine_tune_job as ftj
from phiops_operator.builders import knowledge_base as kb
from phiops_operator.builders import phi_deployment as pd
from phiops_operator.builders.common import labels
from phiops_operator.config import OperatorConfig
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.models.kinds import (
    ALL_KINDS,
    FINE_TUNE_JOB,
    KNOWLEDGE_BASE,
    PHI_DEPLOYMENT,
    Kind,
)
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_operator.models.phi_deployment import PhiDeploymentSpec
from phiops_operator.names import DERIVED, max_name_length, name_problem
from phiops_operator.validation import InvalidSpec, validate

PVC_ADAPTER = {"pvc": {"claimName": "adapters"}}


def test_limits_follow_the_longest_derived_name() -> None:
    # <name>-sync-<10 hex>-promote, <name>-train-100 and <name>-server.
    assert max_name_length(KNOWLEDGE_BASE) == 63 - len("-sync-0123456789-promote")
    assert max_name_length(FINE_TUNE_JOB) == 63 - len("-train-100")
    assert max_name_length(PHI_DEPLOYMENT) == 63 - len("-server")


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_a_name_at_the_limit_passes_and_one_more_fails(kind: Kind) -> None:
    limit = max_name_length(kind)
    assert name_problem(kind, "a" * limit) is None
    problem = name_problem(kind, "a" * (limit + 1))
    assert problem is not None and problem.startswith("metadata.name:")
    assert f"at most {limit}" in problem
    for rule in DERIVED[kind.kind]:
        assert len(rule.derive("a" * limit)) <= rule.max_length


def test_the_instance_label_is_the_name() -> None:
    # The label rule in names.py stands for this label of every child.
    assert labels("PhiDeployment", "x", "server")["app.kubernetes.io/instance"] == "x"


@pytest.mark.parametrize("name", ["1st-model", "v1.2"])
def test_service_backed_kinds_need_an_rfc1035_name(name: str) -> None:
    assert "must start with a letter" in (name_problem(PHI_DEPLOYMENT, name) or "")
    assert "must start with a letter" in (name_problem(KNOWLEDGE_BASE, name) or "")
    assert name_problem(FINE_TUNE_JOB, name) is None


def test_an_adapter_named_like_the_base_is_invalid() -> None:
    spec = {"model": {"name": "tiny-phi3"}, "adapters": [{"name": "tiny-phi3", **PVC_ADAPTER}]}
    with pytest.raises(InvalidSpec, match=r"^spec\.adapters\[0\]\.name: 'tiny-phi3' is already"):
        validate(PHI_DEPLOYMENT, "chat", spec)


def test_name_and_spec_problems_are_reported_together() -> None:
    spec = {"adapters": [{"name": "a", **PVC_ADAPTER}, {"name": "a", **PVC_ADAPTER}]}
    with pytest.raises(InvalidSpec) as info:
        validate(PHI_DEPLOYMENT, "x" * 60, spec)
    assert str(info.value).startswith("metadata.name: 60 characters is too long")
    assert "spec.adapters[1].name: 'a' is already taken by spec.adapters[0].name" in str(info.value)


# -- the limits against what the builders really make ----------------------------------------

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
RFC_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def parent(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": "n" * 63, "uid": "u-1", "generation": 1}
    return {"apiVersion": "phiops.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def every_child(kind: str, name: str) -> list[dict[str, Any]]:
    """Every child the builders may make for a resource named `name`, the longest-named
    variants included (the last attempt, a sharded sync's promotion, the drop Job)."""
    config = OperatorConfig()
    if kind == "KnowledgeBase":
        raw = {
            "sources": [{"name": "docs", "configMap": {"name": "docs"}}],
            "vectorStore": {"milvus": {"uri": "http://milvus:19530"}},
            "sync": {"parallelism": 64},
        }
        spec = KnowledgeBaseSpec.model_validate(raw)
        p = parent(kind, name, raw)
        plan = kb.plan_sync(p, spec, {"generation": 1})
        embedded = KnowledgeBaseSpec.model_validate({"sources": raw["sources"]})
        return [
            *kb.store_children(parent(kind, name, {}), embedded, config),
            *kb.sync_children(p, spec, plan, config),
            kb.promote_job(p, spec, plan, config),
            kb.cleanup_job(p, spec, plan.alias, config),
        ]
    if kind == "FineTuneJob":
        raw = {"dataset": {"url": "https://e.example.com/d.jsonl"}, "backoffLimit": 100}
        spec_f = FineTuneJobSpec.model_validate(raw)
        p = parent(kind, name, raw)
        claim = ftj.output_claim(p, spec_f)
        assert claim is not None
        return [
            *ftj.setup_children(p, spec_f, config),
            claim,
            ftj.preflight_job(p, spec_f, config),
            ftj.train_job(p, spec_f, config, spec_f.backoff_limit),
        ]
    spec_p = PhiDeploymentSpec.model_validate({})
    return pd.build(parent(kind, name, {}), spec_p, config, pd.Inputs())


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_every_child_of_a_name_at_the_limit_is_one_kubernetes_accepts(kind: Kind) -> None:
    name = "a" * max_name_length(kind)
    children = every_child(kind.kind, name)
    longest = 0
    for child in children:
        meta = child["metadata"]
        assert len(meta["name"]) <= 253
        if child["kind"] in ("Job", "Service"):  # Job names become the pods' job-name label
            assert len(meta["name"]) <= 63 and LABEL_VALUE.match(meta["name"])
            longest = max(longest, len(meta["name"]))
        if child["kind"] == "Service":
            assert RFC_1035.match(meta["name"])
        pod_labels = (child.get("spec", {}).get("template", {}).get("metadata") or {}).get(
            "labels", {}
        )
        for value in [*meta.get("labels", {}).values(), *pod_labels.values()]:
            assert len(value) <= 63 and LABEL_VALUE.match(value), (child["kind"], value)
    assert longest == 63, "the limit is exactly what the longest child needs"
