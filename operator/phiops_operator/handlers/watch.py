"""Kopf glue for the event-driven loop: every watch event goes to the `Controller`, which
decides what to reconcile, and the kinds reconciles read fill the `ObjectStore` through Kopf
indexes (Kopf runs no other handler until every index has seen its initial listing).
Registered after the kinds' modules (it reads their registry). The handlers are coroutines:
Kopf runs plain functions in threads, away from the loop the controller's queue lives on."""

from __future__ import annotations

from typing import Any

import kopf

from phiops_operator import GROUP, VERSION
from phiops_operator.builders.common import MANAGED_BY
from phiops_operator.controller import Controller
from phiops_operator.k8s import PLURALS, Kube
from phiops_operator.object_store import MANAGED_BY_LABEL, SELECTORS, parse_selector
from phiops_operator.reconcile import REGISTRY

# The children phiops makes, watched by its managed-by label: (group, version, plural).
CHILD_KINDS = (
    ("", "v1", "configmaps"),
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "pods"),
    ("", "v1", "services"),
    ("", "v1", "serviceaccounts"),
    ("apps", "v1", "deployments"),
    ("batch", "v1", "jobs"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
)
# Objects users make that resources reference by name: (plural, kind).
INPUT_KINDS = (("configmaps", "ConfigMap"), ("persistentvolumeclaims", "PersistentVolumeClaim"))


def _controller(memo: kopf.Memo) -> Controller | None:
    controller: Controller | None = memo.get("controller")
    return controller


def _register_resource(plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"watch_{plural}")
    async def on_resource(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        controller = _controller(memo)
        if controller is not None:
            controller.resource_event(plural, body, type)


def _register_child(group: str, version: str, plural: str) -> None:
    @kopf.on.event(
        group, version, plural, id=f"children_{plural}", labels={MANAGED_BY_LABEL: MANAGED_BY}
    )
    async def on_child(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        controller = _controller(memo)
        if controller is not None:
            controller.child_event(body, type)


def _register_input(plural: str, kind: str) -> None:
    @kopf.on.event("", "v1", plural, id=f"inputs_{plural}")
    async def on_input(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        controller = _controller(memo)
        if controller is not None:
            controller.input_event(kind, body, type)


def _register_store(api_version: str, kind: str, selector: str) -> None:
    group, _, version = api_version.rpartition("/")
    labels = {r.key: r.value for r in parse_selector(selector) or []}
    plural = PLURALS[(api_version, kind)]

    @kopf.index(group, version, plural, id=f"store_{plural}", labels=labels or None)
    async def store(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """Every version of the object but its deletion (the event handlers see that)."""
        kube: Kube | None = memo.get("kube")
        if kube is not None and kube.objects is not None:
            kube.objects.observe(body)


for _plural in REGISTRY:
    _register_resource(_plural)
for _group, _version, _child in CHILD_KINDS:
    _register_child(_group, _version, _child)
for _input, _kind in INPUT_KINDS:
    _register_input(_input, _kind)
for (_api_version, _stored_kind), _selector in SELECTORS.items():
    _register_store(_api_version, _stored_kind, _selector)
