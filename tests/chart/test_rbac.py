"""RBAC: exactly what the operator's code and Kopf use, no wildcards, and nothing cluster-wide
about workloads in namespaced mode.

The operator's API use is read from its source: every `kube.get/list/delete(apiVersion, kind,
...)` call, and every kind the builders emit (applied server-side: create + patch). A new call
that the chart's rules do not allow, or a rule no code needs, fails here with its name.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.chart.manifests import VALUES_NAMES, by_kind, rendered
from tests.chart.tools import REPO

OPERATOR = REPO / "operator" / "phiops_operator"
GROUP = "phiops.dev"
CUSTOM = ("knowledgebases", "finetunejobs", "phideployments")
WORKLOAD_GROUPS = {"", "apps", "batch", "networking.k8s.io", "rbac.authorization.k8s.io", GROUP}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

# What Kopf itself does (kopf 1.44: watching, finalizers/annotations, status, events).
KOPF: set[Grant] = {
    *((GROUP, r, v) for r in CUSTOM for v in ("list", "watch", "patch")),
    *((GROUP, f"{r}/status", "patch") for r in CUSTOM),
    ("", "events", "create"),
}
# Granted without a line of code asking, each for a stated reason.
ALLOWED_EXTRA: dict[Grant, str] = {
    **{
        (GROUP, f"{r}/finalizers", "update"): "blockOwnerDeletion under "
        "OwnerReferencesPermissionEnforcement"
        for r in CUSTOM
    },
    (GROUP, "phideployments", "get"): "one rule for the three kinds the operator owns",
}
CLUSTER_SCOPED: set[Grant] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
NAMESPACE_WATCH: set[Grant] = {("", "namespaces", "list"), ("", "namespaces", "watch")}


def _plurals() -> dict[tuple[str, str], str]:
    from phiops_operator.k8s import PLURALS

    return dict(PLURALS)


def _resource(api_version: str, kind: str) -> tuple[str, str]:
    plural = _plurals().get((api_version, kind))
    if plural is None:
        matches = [p for (v, k), p in _plurals().items() if k == kind]
        assert len(matches) == 1, f"kind {kind} is not in phiops_operator.k8s.PLURALS"
        plural = matches[0]
        api_version = next(v for (v, k) in _plurals() if k == kind)
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group, plural


CALL = re.compile(r"kube\.(get|list|delete)\(\s*(f?\"[^\"]+\"),\s*\"(\w+)\"")
ANY_CALL = re.compile(r"kube\.(get|list|delete)\(")
BUILT_KIND = re.compile(r"\"kind\":\s*\"([A-Z]\w+)\"")


def operator_needs() -> set[Grant]:
    """(group, resource, verb) for every API call the operator's code makes."""
    needs: set[Grant] = set()
    for path in sorted(OPERATOR.rglob("*.py")):
        if path.name == "k8s.py":
            continue
        text = path.read_text()
        calls = CALL.findall(text)
        assert len(calls) == len(ANY_CALL.findall(text)), (
            f"{path.relative_to(REPO)}: a kube call whose apiVersion/kind are not literals; "
            "teach tests/chart/test_rbac.py to read it"
        )
        for verb, api_version, kind in calls:
            version = api_version.strip('f"').replace("{GROUP}/{VERSION}", f"{GROUP}/v1alpha1")
            group, plural = _resource(version, kind)
            needs.add((group, plural, verb))
    for path in sorted((OPERATOR / "builders").glob("*.py")):
        for kind in BUILT_KIND.findall(path.read_text()):
            group, plural = _resource("", kind)
            needs |= {(group, plural, "create"), (group, plural, "patch")}
    return needs | watched()


def watched() -> set[Grant]:
    """The children and inputs the operator watches (Kopf lists, then watches)."""
    from phiops_operator.handlers import watch

    kinds = [(group, plural) for group, _, plural in watch.CHILD_KINDS]
    kinds += [("", plural) for plural, _ in watch.INPUT_KINDS]
    return {(group, plural, verb) for group, plural in kinds for verb in ("list", "watch")}


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in rules:
        assert not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


def _roles(docs: tuple[dict[str, Any], ...]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }


def test_the_code_scan_finds_the_operator_calls() -> None:
    needs = operator_needs()
    # A few calls that exist today; if the scan broke, this says so before anything else.
    assert ("batch", "jobs", "list") in needs
    assert ("", "pods", "list") in needs
    assert ("", "configmaps", "create") in needs


@pytest.mark.parametrize("values", VALUES_NAMES)
def test_no_wildcards(values: str) -> None:
    for role in _roles(rendered(values)).values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"
                assert all("*" not in item for item in rule.get(field, []) if item)


def _workload_grants(docs: tuple[dict[str, Any], ...]) -> set[Grant]:
    roles = _roles(docs)
    out: set[Grant] = set()
    for role in roles.values():
        out |= {
            g for g in grants(role["rules"]) if g[0] in WORKLOAD_GROUPS and g[1] != "namespaces"
        }
    return out


@pytest.mark.parametrize("values", ["defaults", "namespaced"])
def test_rules_allow_everything_the_operator_and_kopf_do(values: str) -> None:
    granted = _workload_grants(rendered(values))
    missing = (operator_needs() | KOPF) - granted
    assert not missing, f"the chart's RBAC does not allow: {sorted(missing)}"


@pytest.mark.parametrize("values", ["defaults", "namespaced"])
def test_rules_allow_nothing_unneeded(values: str) -> None:
    granted = _workload_grants(rendered(values))
    extra = granted - operator_needs() - KOPF - set(ALLOWED_EXTRA)
    assert not extra, f"granted but used by no code: {sorted(extra)}"
    assert not {g for g in granted if g[1] == "secrets"}, "the operator never reads Secrets"


def test_cluster_mode_binds_one_cluster_role_for_workloads() -> None:
    docs = rendered("defaults")
    bindings = by_kind(docs, "ClusterRoleBinding")
    roles = _roles(docs)
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    workload_roles = [
        b
        for b in bindings
        if grants(roles[("ClusterRole", "", b["roleRef"]["name"])]["rules"]) - CLUSTER_SCOPED
    ]
    assert len(workload_roles) == 1
    discovery = grants(roles[("ClusterRole", "", "phiops-discovery")]["rules"])
    assert discovery == CLUSTER_SCOPED, "all namespaces watched: Kopf lists no namespaces"


def test_namespaced_mode_grants_workloads_only_per_namespace() -> None:
    docs = rendered("namespaced")
    roles = _roles(docs)
    for binding in by_kind(docs, "ClusterRoleBinding"):
        role = roles[("ClusterRole", "", binding["roleRef"]["name"])]
        cluster_grants = grants(role["rules"])
        assert cluster_grants <= CLUSTER_SCOPED | NAMESPACE_WATCH, (
            f"ClusterRoleBinding {binding['metadata']['name']} grants {sorted(cluster_grants)}"
        )
    # Kopf follows the listed namespaces (creation, deletion) when it may list them.
    assert grants(roles[("ClusterRole", "", "phiops-discovery")]["rules"]) >= NAMESPACE_WATCH
    namespaces = {}
    for binding in by_kind(docs, "RoleBinding"):
        ns = binding["metadata"]["namespace"]
        assert binding["roleRef"]["kind"] == "Role"
        assert ("Role", ns, binding["roleRef"]["name"]) in roles
        (subject,) = binding["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": "phiops", "namespace": "phiops"}
        namespaces[ns] = grants(roles[("Role", ns, binding["roleRef"]["name"])]["rules"])
    assert set(namespaces) == {"team-a", "team-b"}
    assert namespaces["team-a"] == namespaces["team-b"] == _workload_grants(rendered("defaults"))


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    import yaml

    from tests.chart.tools import template

    docs = [d for d in yaml.safe_load_all(template(sets=("rbac.create=false",))) if d]
    assert not {d["kind"] for d in docs} & {
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
    }
