"""The shared reconcile writes status on every way out that a user must see: an invalid spec
or name (then never again), a child the API server refuses (then slowly)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from phiops_operator.k8s import Kube, Rejected
from phiops_operator.models.kinds import PHI_DEPLOYMENT
from phiops_operator.reconcile import (
    REJECTED_RETRY_SECONDS,
    Context,
    Registration,
    known_invalid,
    merged,
    reconcile,
)


def body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "PhiDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": "u-1", "generation": 3},
        "spec": spec,
    }


class StatusSink:
    """Takes the status patches a reconcile sends, as the API server would."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        self.patches.append(args[-1])
        return {"metadata": {"resourceVersion": "1"}}


def ready(patch: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in patch["conditions"] if c["type"] == "Ready")


async def test_an_invalid_name_is_written_to_status_and_not_retried() -> None:
    calls: list[str] = []

    async def step(context: Context, spec: Any) -> Any:
        calls.append("step")  # must not run: nothing may be created
        raise AssertionError

    sink = StatusSink()
    clash = {"model": {"name": "tiny"}, "adapters": [{"name": "tiny", "pvc": {"claimName": "a"}}]}
    invalid = body("p" * 60, clash)
    registration = Registration(PHI_DEPLOYMENT, step, lambda spec: set())
    _, again = await reconcile(registration, invalid, sink, None, {}, logging)  # type: ignore[arg-type]
    assert calls == [] and again is None
    (patch,) = sink.patches
    cond = ready(patch)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert cond["message"].startswith("metadata.name: 60 characters is too long")
    assert "spec.adapters[0].name: 'tiny' is already taken by the base model" in cond["message"]
    assert patch["observedGeneration"] == 3
    # Never again for this generation: the next event finds it known invalid.
    invalid["status"] = merged({}, patch)
    assert known_invalid(invalid)
    await reconcile(registration, invalid, sink, None, {}, logging)  # type: ignore[arg-type]
    assert len(sink.patches) == 1


async def test_a_child_the_api_server_refuses_is_on_the_resource_and_retried_slowly() -> None:
    async def step(context: Context, spec: Any) -> Any:
        raise Rejected("the API server refused Service x-server: spec.ports[0].port: Invalid")

    sink = StatusSink()
    registration = Registration(PHI_DEPLOYMENT, step, lambda spec: set())
    _, again = await reconcile(registration, body("x", {}), sink, None, {}, logging)  # type: ignore[arg-type]
    assert again == REJECTED_RETRY_SECONDS
    cond = ready(sink.patches[0])
    assert (cond["status"], cond["reason"]) == ("False", "ChildRejected")
    assert "Service x-server" in cond["message"]


class RefusingApi:
    """An API client whose every call is refused as the 1.20 server refuses a long name."""

    async def call_api(self, *args: Any, **kwargs: Any) -> Any:
        err = ApiException(status=422, reason="Unprocessable Entity")
        err.body = json.dumps(
            {"message": 'Service "x-server" is invalid: metadata.name: must be no more than 63'}
        )
        raise err


async def test_a_422_on_apply_names_the_child_and_the_servers_reason() -> None:
    kube = Kube(RefusingApi())  # type: ignore[arg-type]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x-server"}}
    service["metadata"]["namespace"] = "ns"
    with pytest.raises(Rejected, match=r"refused Service x-server: .*no more than 63"):
        await kube.apply(service)
