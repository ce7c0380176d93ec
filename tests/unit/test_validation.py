"""Validation before anything is created: name limits derived from the builders, and the
spec's cross-field rules naming the exact field."""

from __future__ import annotations

import pytest
from phiops_operator.builders.common import labels
from phiops_operator.models.kinds import (
    ALL_KINDS,
    FINE_TUNE_JOB,
    KNOWLEDGE_BASE,
    PHI_DEPLOYMENT,
    Kind,
)
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
