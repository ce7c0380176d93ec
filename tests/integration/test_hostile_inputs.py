"""The hostile-input corpus (tests/inputs/) applied at once to a real API server with the
operator in-process: each file meets its declared outcome within 10 s, nothing accepted
creates a child, nothing is left after deletion, and nothing is reconciled in a loop. Then
inputs that appear late: the resources waiting for them go ahead by themselves."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from phiops_operator import metrics
from phiops_operator.models.kinds import ALL_KINDS
from phiops_operator.units import parse_time

from tests import helpers
from tests.conftest import Cluster
from tests.helpers import EXPECT, EXPECT_FIELD, EXPECT_REASON, INPUTS_DIR

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
NS = "hostile-inputs"
LATE_NS = "late-inputs"
DEADLINE_S = 10
# Longer than the operator's timers (5 s), twice: a retry loop would show in it.
QUIET_S = 12
CHILD_KINDS = (
    "jobs,deployments,services,persistentvolumeclaims,configmaps,serviceaccounts,roles,rolebindings"
)
CUSTOM_KINDS = "knowledgebases,finetunejobs,phideployments"
CORPUS = helpers.hostile_inputs()


def notes(doc: dict[str, Any]) -> dict[str, str]:
    return doc["metadata"]["annotations"]  # type: ignore[no-any-return]


def accepted_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(stem, doc) for stem, doc in CORPUS if notes(doc)[EXPECT] != "rejected"]


def items(cluster: Cluster, namespace: str, kinds: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "-n", namespace, kinds, "-o", "json")
    return json.loads(out)["items"]  # type: ignore[no-any-return]


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
    return found[0] if found else {}


def reconciles(result: str) -> float:
    """Reconciles with `result` counted by the operator running in this process."""
    return sum(metrics.RECONCILES.labels(k.kind, result)._value.get() for k in ALL_KINDS)


def children_of(cluster: Cluster, namespace: str, objs: list[dict[str, Any]]) -> list[str]:
    """Objects labelled with one of `objs` as their instance, or owned by one of them."""
    names = {o["metadata"]["name"] for o in objs}
    uids = {o["metadata"]["uid"] for o in objs}
    found = []
    for child in items(cluster, namespace, CHILD_KINDS):
        meta = child["metadata"]
        instance = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
        owners = {ref["uid"] for ref in meta.get("ownerReferences") or []}
        if instance in names or owners & uids:
            found.append(f"{child['kind']}/{meta['name']}")
    return found


def refusal(output: str, stem: str) -> str | None:
    """What kubectl said about the file `stem` (it names the file only in errors)."""
    at = output.find(f'/{stem}.yaml"')
    if at < 0:
        return None
    rest = output[at:]
    ends = [i for i in (rest.find("Error from server", 1), rest.find("\nerror", 1)) if i > 0]
    return rest[: min(ends, default=len(rest))]


def matches(doc: dict[str, Any], obj: dict[str, Any]) -> bool:
    """The object reached the outcome its file declares."""
    cond = ready(obj)
    wanted = notes(doc)
    reason = "InvalidSpec" if wanted[EXPECT] == "invalid" else wanted[EXPECT_REASON]
    return (
        cond.get("status") == "False"
        and cond.get("reason") == reason
        and wanted[EXPECT_FIELD] in (cond.get("message") or "")
    )


@pytest.fixture(scope="module")
def applied(operator: int, crds: Cluster) -> Iterator[dict[str, Any]]:
    """The whole corpus applied in one `kubectl apply`, then polled until every accepted
    resource reached its declared state (or the deadline passed)."""
    crds.kubectl("create", "namespace", NS)
    errors_before, invalid_before = reconciles("error"), reconciles("invalid")
    started = time.monotonic()
    out = crds.kubectl("apply", "--validate=false", "-n", NS, "-f", str(INPUTS_DIR), check=False)
    applied_in = time.monotonic() - started
    expected = {doc["metadata"]["name"]: doc for _, doc in accepted_docs()}
    reached: dict[str, float] = {}
    latest: dict[str, dict[str, Any]] = {}
    deadline = started + applied_in + DEADLINE_S + 5
    while time.monotonic() < deadline and len(reached) < len(expected):
        for obj in items(crds, NS, CUSTOM_KINDS):
            name = obj["metadata"]["name"]
            latest[name] = obj
            if name in expected and name not in reached and matches(expected[name], obj):
                # Seconds from its creation (stamped to the second) to its declared state.
                reached[name] = time.time() - parse_time(obj["metadata"]["creationTimestamp"])
        time.sleep(0.5)
    yield {
        "output": out,
        "applied_in": applied_in,
        "reached": reached,
        "latest": latest,
        "errors_before": errors_before,
        "invalid_before": invalid_before,
    }


def test_the_api_server_refuses_what_the_schema_forbids_naming_the_field(
    applied: dict[str, Any],
) -> None:
    output: str = applied["output"]
    for stem, doc in CORPUS:
        found = refusal(output, stem)
        if notes(doc)[EXPECT] == "rejected":
            assert found is not None, f"{stem} was not refused:\n{output}"
            assert notes(doc)[EXPECT_FIELD] in found, (stem, found)
        else:
            assert found is None, (stem, found)


def test_accepted_resources_reach_their_state_within_10_s(applied: dict[str, Any]) -> None:
    late = []
    for _, doc in accepted_docs():
        name = doc["metadata"]["name"]
        took = applied["reached"].get(name)
        if took is None or took > DEADLINE_S + 1:  # + 1: creationTimestamp has whole seconds
            obj = applied["latest"].get(name) or {}
            late.append(f"{doc['kind']}/{name}: {took} s, Ready={ready(obj)}")
    assert not late, "\n".join(late)
    # To the real stderr: Kopf's runner (click's CliRunner) holds sys.stdout meanwhile.
    print(
        f"\n{len(CORPUS)} files applied in {applied['applied_in']:.1f} s; "
        f"{len(applied['reached'])} accepted reached their state at most "
        f"{max(applied['reached'].values()):.1f} s after their creation",
        file=sys.__stderr__,
    )


def test_invalid_resources_are_not_accepted_and_nothing_is_created(
    applied: dict[str, Any], crds: Cluster
) -> None:
    for _, doc in accepted_docs():
        obj = applied["latest"][doc["metadata"]["name"]]
        accepted = [c for c in obj["status"]["conditions"] if c["type"] == "Accepted"]
        if notes(doc)[EXPECT] == "invalid":
            assert accepted and accepted[0]["status"] == "False", obj["status"]
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    objs = items(crds, NS, CUSTOM_KINDS)
    assert children_of(crds, NS, objs) == []


def test_each_invalid_resource_has_one_warning_event_naming_the_field(
    applied: dict[str, Any], crds: Cluster
) -> None:
    """What `kubectl describe` shows: the operator's Event, Warning, the field in its message."""
    posted: dict[str, list[dict[str, Any]]] = {}
    for event in items(crds, NS, "events"):
        if event.get("source", {}).get("component") == "phiops-operator":
            posted.setdefault(event["involvedObject"]["name"], []).append(event)
    for _, doc in accepted_docs():
        if notes(doc)[EXPECT] != "invalid":
            continue
        name = doc["metadata"]["name"]
        found = [(e["type"], e["reason"], e["message"]) for e in posted.get(name, [])]
        assert len(found) == 1, (name, found)
        kind, reason, message = found[0]
        assert (kind, reason) == ("Warning", "InvalidSpec"), (name, found)
        assert notes(doc)[EXPECT_FIELD] in message, (name, message)


def test_no_reconcile_loop_and_still_nothing_created(
    applied: dict[str, Any], crds: Cluster
) -> None:
    invalid, errors = reconciles("invalid"), reconciles("error")
    success = reconciles("success")
    time.sleep(QUIET_S)
    # A permanent error is not retried; nothing failed unexpectedly (a retried exception).
    assert reconciles("invalid") == invalid
    assert reconciles("error") == errors == applied["errors_before"]
    # Waiting resources are looked at again, at the timers' pace at most.
    waiting = sum(1 for _, d in accepted_docs() if notes(d)[EXPECT] == "waiting")
    assert reconciles("success") - success <= waiting * (QUIET_S / 5 + 1)
    invalid_count = sum(1 for _, d in accepted_docs() if notes(d)[EXPECT] == "invalid")
    assert reconciles("invalid") - applied["invalid_before"] == invalid_count
    objs = items(crds, NS, CUSTOM_KINDS)
    assert children_of(crds, NS, objs) == []


def test_nothing_is_left_after_deletion(applied: dict[str, Any], crds: Cluster) -> None:
    objs = items(crds, NS, CUSTOM_KINDS)
    crds.kubectl("delete", "-n", NS, CUSTOM_KINDS, "--all", "--wait=false")
    # Generous: Kopf runs each deletion (finalizer) in turn, slowly on a loaded machine.
    deadline = time.monotonic() + 180
    while (left := items(crds, NS, CUSTOM_KINDS)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, [
        (o["kind"], o["metadata"]["name"], o["metadata"].get("finalizers"), o.get("status"))
        for o in left
    ]
    assert children_of(crds, NS, objs) == []
    assert items(crds, NS, "persistentvolumeclaims,jobs,deployments,services") == []


# -- inputs that appear late ------------------------------------------------------------------

RECORDS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}: is item {i} in stock?"},
            {"role": "assistant", "content": f"Yes, item {i} ships from Rotterdam today."},
        ]
    }
    for i in range(8)
]


def late_get(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    return cluster.get(LATE_NS, kind, name)


def wait_ready(cluster: Cluster, kind: str, name: str, reason: str, text: str = "") -> Any:
    def check() -> dict[str, Any] | None:
        cond = ready(late_get(cluster, kind, name) or {})
        return cond if cond.get("reason") == reason and text in cond.get("message", "") else None

    return helpers.eventually(check, timeout=240, what=f"{kind} {name}: {reason} {text}")


@pytest.fixture(scope="module")
def late(operator: int, crds: Cluster) -> Cluster:
    crds.kubectl("create", "namespace", LATE_NS)
    return crds


def test_a_fine_tune_job_applied_before_its_inputs_starts_when_they_appear(late: Cluster) -> None:
    job = {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "early"},
        "spec": {
            "baseModel": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
            "dataset": {"configMap": {"name": "chat", "key": "train.jsonl"}, "maxSeqLength": 96},
            "method": "lora",
            "lora": {"r": 8, "alpha": 16},
            "training": {"maxSteps": 4, "batchSize": 4, "gradientCheckpointing": False},
            "resources": {"gpus": 1},
        },
    }
    late.apply(job, LATE_NS)
    cond = wait_ready(late, "ftj", "early", "WaitingForInputs", "spec.dataset.configMap.name")
    assert "spec.baseModel.pvc.claimName" in cond["message"]
    obj = late_get(late, "ftj", "early")
    assert obj is not None
    assert children_of(late, LATE_NS, [obj]) == []  # waiting creates nothing

    # The dataset and the claim appear; the model folder on it does not exist yet.
    data = "\n".join(json.dumps(r) for r in RECORDS) + "\n"
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "chat"}}
    late.apply(configmap | {"data": {"train.jsonl": data}}, LATE_NS)
    late.apply(helpers.models_claim(), LATE_NS)
    cond = wait_ready(late, "ftj", "early", "WaitingForInputs", "base model folder")
    assert "Repo id" not in cond["message"] and "spec.baseModel.pvc" in cond["message"]
    assert late_get(late, "pvc", "early-output") is None  # no output claim before training

    late.apply(helpers.tiny_model_pod(), LATE_NS)
    helpers.eventually(
        lambda: late_get(late, "job", "early-train-0"),
        timeout=300,
        what="the pre-flight to pass once the model is there and training to start",
    )
    claim = late_get(late, "pvc", "early-output")
    assert claim is not None and "ownerReferences" not in claim["metadata"]  # Retain


def test_a_deployment_and_a_knowledge_base_notice_late_inputs(late: Cluster) -> None:
    deployment = {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "PhiDeployment",
        "metadata": {"name": "asks-kb"},
        "spec": {"knowledgeBaseRef": {"name": "handbook"}, "replicas": 0},
    }
    late.apply(deployment, LATE_NS)
    wait_ready(late, "phid", "asks-kb", "KnowledgeBaseNotReady", "KnowledgeBase handbook not found")
    knowledge = {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "handbook"},
        "spec": {"sources": [{"name": "docs", "configMap": {"name": "handbook-docs"}}]},
    }
    late.apply(knowledge, LATE_NS)
    wait_ready(late, "kb", "handbook", "SourceNotFound", "spec.sources[0].configMap.name")
    kb = late_get(late, "kb", "handbook")
    assert kb is not None and children_of(late, LATE_NS, [kb]) == []  # no store while waiting
    # The deployment noticed the knowledge base by itself: it now waits for its first sync.
    wait_ready(late, "phid", "asks-kb", "KnowledgeBaseNotReady", "no synced collection yet")
    docs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "handbook-docs"}}
    late.apply(docs | {"data": {"a.md": "# Shipping\n\nOrders ship from Rotterdam."}}, LATE_NS)
    helpers.eventually(
        lambda: late_get(late, "deployment", "handbook-store"),
        timeout=60,
        what="the store to be made once the source exists",
    )
