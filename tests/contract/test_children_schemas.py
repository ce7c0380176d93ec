"""Every child the builders make (tests/children.py: every option combination) validates
against the Kubernetes schemas, offline and strict (an unknown field is an error), as the
chart's objects do."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests import children

# The chart's range (tests/chart/test_chart.py); NetworkPolicy and the rest are GA in both.
KUBERNETES_VERSIONS = ("1.28.0", "1.33.0")
CHILDREN = children.all_children()


def test_every_kind_the_builders_make_is_covered() -> None:
    kinds = {child["kind"] for _, child in CHILDREN}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("case", "child"),
    CHILDREN,
    ids=[f"{case} {c['kind']}/{c['metadata']['name']}" for case, c in CHILDREN],
)
def test_child_validates(case: str, child: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(child, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        pytest.fail(f"{child['kind']}/{child['metadata']['name']} at {path}: {err.message}")
