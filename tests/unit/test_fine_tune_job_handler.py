"""The FineTuneJob reconcile step against an in-memory API: nothing is created while an input
is missing, the output claim only when training starts, and a pre-flight that found the model
folder missing runs again instead of failing the job."""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
from phiops_operator.config import OperatorConfig
from phiops_operator.handlers import fine_tune_job as handler
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.reconcile import Context
from phiops_workload.contracts import WorkloadResult

NS = "ml"
Obj = dict[str, Any]
SPEC: Obj = {
    "baseModel": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
    "dataset": {"configMap": {"name": "chat", "key": "train.jsonl"}},
}


class FakeKube:
    """Objects by (kind, name); label selectors of the `k=v,k` form."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}

    def put(self, obj: Obj) -> None:
        self.objects[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.objects.get((kind, name)))

    async def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        def selected(obj: Obj) -> bool:
            labels = obj["metadata"].get("labels") or {}
            for term in selector.split(","):
                key, _, value = term.partition("=")
                if key not in labels or (value and labels[key] != value):
                    return False
            return True

        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind and selected(o)]

    async def apply_all(self, manifests: list[Obj]) -> list[Obj]:
        return [await self.apply(m) for m in manifests]

    async def apply(self, manifest: Obj) -> Obj:
        self.put(manifest)
        return copy.deepcopy(manifest)

    async def delete(
        self, api_version: str, kind: str, namespace: str, name: str, propagation: str = ""
    ) -> bool:
        return self.objects.pop((kind, name), None) is not None

    def kinds(self) -> set[tuple[str, str]]:
        return set(self.objects)


async def reconcile(kube: FakeKube) -> tuple[str, str, str]:
    parent = {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tone", "namespace": NS, "uid": "u-1", "generation": 1},
        "spec": SPEC,
    }
    context = Context(kube, OperatorConfig(), parent, kopf.Memo(), logging.getLogger("test"))  # type: ignore[arg-type]
    observed, fields = await handler.step(context, FineTuneJobSpec.model_validate(SPEC))
    ready = next(o for o in observed if o.type == "Ready")
    return ready.reason, ready.message, fields["phase"]


def inputs() -> list[Obj]:
    chat = {"kind": "ConfigMap", "metadata": {"name": "chat"}, "data": {"train.jsonl": "{}"}}
    return [chat, {"kind": "PersistentVolumeClaim", "metadata": {"name": "models"}}]


def finish(kube: FakeKube, job: str, result: WorkloadResult, succeeded: bool) -> None:
    """What the Job controller and the pod would leave: a finished Job and its pod's message."""
    obj = kube.objects[("Job", job)]
    finished = "2026-01-01T00:00:00Z"
    obj["status"] = (
        {"succeeded": 1, "completionTime": finished}
        if succeeded
        else {"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": finished}]}
    )
    terminated = {"exitCode": 0 if succeeded else 5, "message": result.model_dump_json()}
    pod = {
        "kind": "Pod",
        "metadata": {"name": f"{job}-x", "labels": {"job-name": job}, "creationTimestamp": "1"},
        "status": {"containerStatuses": [{"state": {"terminated": terminated}}]},
    }
    kube.put(pod)


async def test_nothing_is_created_while_inputs_are_missing() -> None:
    kube = FakeKube()
    reason, message, phase = await reconcile(kube)
    assert (reason, phase) == ("WaitingForInputs", "Pending")
    assert "ConfigMap chat (spec.dataset.configMap.name)" in message
    assert "PersistentVolumeClaim models (spec.baseModel.pvc.claimName)" in message
    assert kube.kinds() == set()


async def test_the_output_claim_comes_with_the_first_training_attempt() -> None:
    kube = FakeKube()
    for obj in inputs():
        kube.put(obj)
    before = kube.kinds()
    reason, _, _ = await reconcile(kube)
    assert reason == "Validating"
    made = kube.kinds() - before
    assert ("Job", "tone-preflight") in made
    assert all(kind != "PersistentVolumeClaim" for kind, _ in made)

    figures = {"dataset": {"records": 1, "invalid": 0}, "total_steps": 1}
    passed = WorkloadResult(outcome="Succeeded", reason="PreflightPassed", figures=figures)
    finish(kube, "tone-preflight", passed, succeeded=True)
    await reconcile(kube)
    assert ("Job", "tone-train-0") in kube.kinds()
    assert ("PersistentVolumeClaim", "tone-output") in kube.kinds()


async def test_a_model_folder_missing_on_its_claim_is_waited_for(
    monkeypatch: Any,
) -> None:
    kube = FakeKube()
    for obj in inputs():
        kube.put(obj)
    await reconcile(kube)
    missing = WorkloadResult(
        outcome="Failed",
        reason="WaitingForInputs",
        message="the base model folder /phiops/model/tiny (spec.baseModel.pvc) is missing",
    )
    finish(kube, "tone-preflight", missing, succeeded=False)
    monkeypatch.setattr(handler.time, "time", lambda: 1767225600.0 + 1)  # finished 1 s ago
    reason, message, phase = await reconcile(kube)
    assert (reason, phase) == ("WaitingForInputs", "Pending") and "spec.baseModel.pvc" in message
    assert ("Job", "tone-preflight") in kube.kinds()
    monkeypatch.setattr(handler.time, "time", lambda: 1767225600.0 + 60)
    await reconcile(kube)  # due: the old pre-flight goes ...
    assert ("Job", "tone-preflight") not in kube.kinds()
    del kube.objects[("Pod", "tone-preflight-x")]  # (its pod with it)
    reason, _, _ = await reconcile(kube)  # ... and a new one starts
    assert reason == "Validating" and ("Job", "tone-preflight") in kube.kinds()
    assert ("PersistentVolumeClaim", "tone-output") not in kube.kinds()
