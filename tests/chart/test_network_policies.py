"""The chart turns the operator's NetworkPolicies on by default, and tells the operator how to
recognise its own pods: a PhiDeployment's admin-port policy, built from the operator's
environment as the chart renders it, admits the chart's operator pod (tests/network_policy.py)
and no other."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from phiops_operator.builders import phi_deployment as phid
from phiops_operator.config import OperatorConfig

from tests import children
from tests.chart.manifests import VALUES_NAMES, one, rendered
from tests.chart.tools import template
from tests.network_policy import Pod, admits


def _operator(docs: tuple[dict[str, Any], ...]) -> tuple[dict[str, str], dict[str, Any]]:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return env, deployment


def test_on_by_default_and_off_by_value() -> None:
    env, _ = _operator(rendered("defaults"))
    assert env["PHIOPS_NETWORK_POLICIES"] == "true"
    docs = tuple(yaml.safe_load_all(template(sets=("networkPolicies.enabled=false",))))
    env, _ = _operator(tuple(d for d in docs if d))
    assert env["PHIOPS_NETWORK_POLICIES"] == "false"


@pytest.mark.parametrize("values", VALUES_NAMES)
def test_the_admin_port_admits_the_charts_operator_pod(
    values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, deployment = _operator(rendered(values))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig()
    parent = children.parents()["PhiDeployment/assistant"]
    spec = phid.PhiDeploymentSpec.model_validate(parent["spec"])
    policies = phid.network_policies(parent, spec, config)
    server = Pod(
        children.NAMESPACE, phid.selector("assistant") | {"app.kubernetes.io/name": "phideployment"}
    )
    namespace = deployment["metadata"]["namespace"]
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    operator_labels = deployment["spec"]["template"]["metadata"]["labels"]
    operator = Pod(namespace, operator_labels, namespace_labels)
    assert admits(policies, operator, server, phid.ADMIN_PORT)
    # Another release's operator, or any other pod of the operator's namespace, is refused.
    other_release = {**operator_labels, "app.kubernetes.io/instance": "other"}
    assert not admits(
        policies, Pod(namespace, other_release, namespace_labels), server, phid.ADMIN_PORT
    )
    assert not admits(policies, Pod(namespace, {}, namespace_labels), server, phid.ADMIN_PORT)
