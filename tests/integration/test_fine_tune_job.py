"""FineTuneJob end to end: the operator in-process, the trainer running for real through the
node runtime on a tiny random-weight Phi-3 (no model hub here), LoRA and QLoRA."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from phiops_devcluster.node_runtime import GPU_NODE, pod_log_path, volume_dir

from tests import helpers
from tests.conftest import Cluster
from tests.pod_security import violations

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
NS = "ftj-tests"
TIMEOUT = 300

# A tiny, memorisable chat dataset: the adapter must learn to answer in the house style.
RECORDS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}: is item {i} in stock?"},
            {"role": "assistant", "content": f"Yes, item {i} ships from Rotterdam today."},
        ]
    }
    for i in range(24)
]


def eventually(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    return helpers.eventually(check, timeout, what)


def apply(cluster: Cluster, manifest: dict[str, Any]) -> None:
    cluster.apply(manifest, NS)


def get(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    return cluster.get(NS, kind, name)


def pods_of(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", NS, "-l", selector, "-o", "json")
    return json.loads(out)["items"]  # type: ignore[no-any-return]


def claim_dir(cluster: Cluster, claim: str) -> Path:
    pvc = get(cluster, "pvc", claim)
    assert pvc is not None and pvc["spec"].get("volumeName"), f"claim {claim} is not bound"
    return volume_dir(cluster.state_dir, pvc["spec"]["volumeName"])


def phase(cluster: Cluster, name: str) -> str | None:
    return ((get(cluster, "ftj", name) or {}).get("status") or {}).get("phase")


def wait_phase(cluster: Cluster, name: str, wanted: str = "Succeeded") -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = get(cluster, "ftj", name)
        current = ((obj or {}).get("status") or {}).get("phase")
        assert current != "Failed" or wanted == "Failed", json.dumps(obj["status"], indent=1)  # type: ignore[index]
        return obj if current == wanted else None

    return eventually(reached, what=f"FineTuneJob {name} to reach {wanted}")  # type: ignore[no-any-return]


def fine_tune_job(name: str, method: str, **training: Any) -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
            "dataset": {
                "configMap": {"name": "chat", "key": "train.jsonl"},
                "maxSeqLength": 96,
            },
            "method": method,
            "lora": {"r": 8, "alpha": 16},
            "training": {
                "maxSteps": 24,
                "batchSize": 4,
                "gradientAccumulationSteps": 1,
                "learningRate": 0.01,
                "warmupRatio": 0,
                "saveSteps": 8,
                "loggingSteps": 2,
                "gradientCheckpointing": False,
                **training,
            },
            "resources": {"gpus": 1},
        },
    }


@pytest.fixture(scope="module")
def models(operator: int, crds: Cluster) -> Cluster:
    """A namespace with a tiny Phi-3 on a PVC (made by a pod of the trainer image) and a
    chat dataset in a ConfigMap."""
    crds.create_namespace(NS)
    apply(crds, helpers.models_claim())
    apply(crds, helpers.tiny_model_pod())
    eventually(
        lambda: (
            ((get(crds, "pod", "make-tiny-model") or {}).get("status") or {}).get("phase")
            == "Succeeded"
        ),
        timeout=180,
        what="the tiny model to be made",
    )
    data = "\n".join(json.dumps(r) for r in RECORDS) + "\n"
    apply(
        crds,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "chat"},
            "data": {"train.jsonl": data},
        },
    )
    return crds


def greedy(model_dir: Path, adapter_dir: Path | None, prompt: str) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    return str(tokenizer.decode(out[0][ids.shape[1] :]))


def test_lora_trains_on_the_gpu_node_and_the_adapter_changes_the_model(models: Cluster) -> None:
    apply(models, fine_tune_job("lora-run", "lora"))
    obj = wait_phase(models, "lora-run")
    status = obj["status"]
    assert status["dataset"]["records"] == len(RECORDS)
    assert status["dataset"]["invalid"] == 0
    assert status["estimatedGpuMemory"].endswith("Gi")
    adapter = status["adapter"]
    assert adapter["claimName"] == "lora-run-output"
    assert len(adapter["sha256"]) == 64 and adapter["sizeBytes"] > 0
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")

    (pod,) = pods_of(
        models, "app.kubernetes.io/instance=lora-run,app.kubernetes.io/component=train"
    )
    assert pod["spec"]["nodeName"] == GPU_NODE
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])

    # Both pods ran restricted; only the trainer got a token, and used it to publish progress.
    (preflight,) = pods_of(
        models, "app.kubernetes.io/instance=lora-run,app.kubernetes.io/component=preflight"
    )
    for each, token in ((pod, True), (preflight, False)):
        assert violations(each["spec"]) == []
        mounts = [m["mountPath"] for m in each["spec"]["containers"][0]["volumeMounts"]]
        assert any("serviceaccount" in m for m in mounts) is token, mounts
    progress = get(models, "configmap", "lora-run-progress")
    assert progress is not None
    assert json.loads(progress["data"]["progress.json"]).get("step", 0) > 0

    out = claim_dir(models, "lora-run-output")
    assert {"adapter_config.json", "adapter_model.safetensors", "provenance.json"} <= {
        p.name for p in out.iterdir()
    }
    provenance = json.loads((out / "provenance.json").read_text())
    text = json.dumps(provenance)
    assert status["dataset"]["sha256"] in text
    assert "lora" in text and '"r": 8' in text.replace(" ", "").replace('"r":8', '"r": 8')

    # Loss went down: the trainer logged it.
    log = pod_log_path(
        models.state_dir, NS, pod["metadata"]["name"], pod["metadata"]["uid"], "train"
    )
    losses = [
        float(x.split("loss")[1].split()[0].strip(":= ,"))
        for x in log.read_text().splitlines()
        if " loss" in x and "eval" not in x and "step" in x
    ]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses

    model_dir = claim_dir(models, "models") / "tiny"
    prompt = "Question 3: is item 3 in stock?"
    assert greedy(model_dir, out, prompt) != greedy(model_dir, None, prompt)


def test_qlora_trains_too(models: Cluster) -> None:
    apply(models, fine_tune_job("qlora-run", "qlora", maxSteps=12))
    status = wait_phase(models, "qlora-run")["status"]
    assert status["adapter"]["sizeBytes"] > 0
    provenance = json.loads((claim_dir(models, "qlora-run-output") / "provenance.json").read_text())
    assert "qlora" in json.dumps(provenance)


def test_killed_training_pod_resumes_from_a_checkpoint(models: Cluster) -> None:
    # Long enough (tens of seconds on the tiny model) that the kill lands mid-run.
    apply(models, fine_tune_job("resumed", "lora", maxSteps=2000, saveSteps=10, loggingSteps=5))
    selector = "app.kubernetes.io/instance=resumed,app.kubernetes.io/component=train"

    def progressed() -> dict[str, Any] | None:
        obj = get(models, "ftj", "resumed")
        step = (((obj or {}).get("status") or {}).get("progress") or {}).get("step", 0)
        return obj if step >= 20 else None

    during = eventually(progressed, what="progress in status while training")
    assert during["status"]["phase"] == "Running"
    assert during["status"]["progress"]["totalSteps"] == 2000
    (first,) = pods_of(models, selector)
    models.kubectl(
        "delete", "pod", "-n", NS, first["metadata"]["name"], "--grace-period=0", "--force"
    )
    wait_phase(models, "resumed")
    pods = [
        p for p in pods_of(models, selector) if p["metadata"]["uid"] != first["metadata"]["uid"]
    ]
    assert pods, "a second training pod ran"
    second = pods[-1]
    log = pod_log_path(
        models.state_dir, NS, second["metadata"]["name"], second["metadata"]["uid"], "train"
    )
    resumed = [line for line in log.read_text().splitlines() if "resuming from step" in line]
    assert resumed and int(resumed[0].split("resuming from step")[1].split()[0].strip(":,")) > 0


def test_invalid_dataset_fails_in_preflight_with_line_numbers(models: Cluster) -> None:
    good = json.dumps(RECORDS[0])
    apply(
        models,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "broken"},
            "data": {"train.jsonl": f'{good}\nnot json at all\n\n{{"messages": 5}}\n'},
        },
    )
    job = fine_tune_job("broken-data", "lora")
    job["spec"]["dataset"]["configMap"]["name"] = "broken"
    apply(models, job)
    status = wait_phase(models, "broken-data", "Failed")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidDataset"
    assert "line 2" in ready["message"]
    assert (
        pods_of(models, "app.kubernetes.io/instance=broken-data,app.kubernetes.io/component=train")
        == []
    )
    jobs = models.kubectl(
        "get", "jobs", "-n", NS, "-l", "app.kubernetes.io/instance=broken-data", "-o", "name"
    )
    assert jobs.split() == ["job.batch/broken-data-preflight"]
    # A job that never trains makes no output claim (one under Retain would be left behind).
    assert get(models, "pvc", "broken-data-output") is None
