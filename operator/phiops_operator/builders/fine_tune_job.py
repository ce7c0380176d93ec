"""Children of a FineTuneJob: the output claim, the trainer's config, a progress ConfigMap
with the one Role allowed to update it, the CPU pre-flight Job and the GPU training Job
attempts. PURE: no API calls."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from phiops_workload.contracts import ResourceIdentity
from phiops_workload.finetune import (
    PROGRESS_KEY,
    DatasetSpec,
    LoraSpec,
    ModelSpec,
    ProgressTarget,
    QuantizationSpec,
    TrainingSpec,
    TrainJobConfig,
)

from phiops_operator import __version__
from phiops_operator.builders.common import (
    child_metadata,
    child_name,
    claim,
    config_map,
    container_resources,
    labels,
    placement,
    restricted,
    secret_volume,
    with_gpus,
)
from phiops_operator.config import OperatorConfig
from phiops_operator.models.fine_tune_job import FineTuneJobSpec

CONFIG_COMPONENT = "train-config"
OUTPUT_COMPONENT = "output"
PROGRESS_COMPONENT = "progress"
TRAINER_COMPONENT = "trainer"
PREFLIGHT_COMPONENT = "preflight"
TRAIN_COMPONENT = "train"
ATTEMPT_LABEL = "phiops.dev/attempt"
SPEC_HASH_ANNOTATION = "phiops.dev/spec-hash"

CONFIG_DIR = "/etc/phiops"
DATASET_DIR = "/phiops/dataset"
MODEL_DIR = "/phiops/model"
OUTPUT_DIR = "/phiops/output"
SECRETS_DIR = "/phiops/secrets"
# Requests where the spec sets none: the pre-flight tokenises the dataset on a CPU node; the
# trainer's host side (data loading, the model before it moves to the GPU) needs more.
PREFLIGHT_REQUESTS = {"cpu": "250m", "memory": "512Mi"}
TRAIN_REQUESTS = {"cpu": "1", "memory": "2Gi"}
# NCCL passes data between the GPUs of one pod through /dev/shm; the runtime's default 64 MiB
# is too small for it. Memory-backed: it counts against the pod's memory.
SHM_DIR = "/dev/shm"
SHM_SIZE = "1Gi"


# Spec fields added after the first release, with their defaults. A field at its default is
# left out of the hash, so that an operator upgrade (whose CRD gives stored jobs the new
# default) does not report every finished job as changed after it started.
LATER_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("training", "paddingFree"): True,
    ("training", "fusedKernels"): "auto",
    ("quantization", "unquantizedDtype"): "float32",
}


def spec_hash(spec: FineTuneJobSpec) -> str:
    """What training started with: a later spec change is reported, never half-applied."""
    wire = spec.to_wire()
    for path, default in LATER_DEFAULTS.items():
        *parents, leaf = path
        holder: Any = wire
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(leaf, default) == default:
            holder.pop(leaf, None)
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()[:16]


def output_location(parent_name: str, spec: FineTuneJobSpec) -> tuple[str, str]:
    """(claim, folder inside it) where the adapter goes."""
    if spec.output.pvc is not None:
        return spec.output.pvc.claim_name, spec.output.pvc.path
    return child_name(parent_name, OUTPUT_COMPONENT), "."


def train_config(parent: Mapping[str, Any], spec: FineTuneJobSpec) -> TrainJobConfig:
    meta = parent["metadata"]
    dataset = spec.dataset
    if dataset.config_map is not None:
        dataset_path = f"{DATASET_DIR}/{dataset.config_map.key}"
    elif dataset.pvc is not None:
        dataset_path = f"{DATASET_DIR}/{dataset.pvc.path}"
    else:
        assert dataset.url is not None  # the model guarantees exactly one
        dataset_path = dataset.url
    base = spec.base_model
    _, output_sub = output_location(meta["name"], spec)
    return TrainJobConfig(
        resource=ResourceIdentity.model_validate(
            {
                "apiVersion": parent["apiVersion"],
                "kind": parent["kind"],
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "generation": meta.get("generation", 0),
            }
        ),
        base_model=ModelSpec(
            name=base.name,
            path=(f"{MODEL_DIR}/{base.pvc.path}".rstrip("/.") or MODEL_DIR) if base.pvc else None,
            revision=base.revision,
            token_file=f"{SECRETS_DIR}/hub/token" if base.token_secret_ref else None,
        ),
        dataset=DatasetSpec(
            path=dataset_path,
            format=dataset.format,
            validation_split=dataset.validation_split,
            max_seq_length=dataset.max_seq_length,
        ),
        method=spec.method,
        lora=LoraSpec(**spec.lora.model_dump()),
        quantization=QuantizationSpec(**spec.quantization.model_dump()),
        training=TrainingSpec(**spec.training.model_dump()),
        output_dir=OUTPUT_DIR if output_sub == "." else f"{OUTPUT_DIR}/{output_sub}",
        progress=ProgressTarget(
            namespace=meta["namespace"], config_map=child_name(meta["name"], PROGRESS_COMPONENT)
        ),
        # One training process per GPU (torchrun, DDP) when the pod has several.
        processes=max(spec.resources.gpus, 1),
        phiops_version=__version__,
    )


def output_claim(parent: Mapping[str, Any], spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """The claim the operator makes for the adapter (None when the spec names one). Made
    only when the first training attempt starts: under reclaimPolicy Retain it is not owned,
    so one made for a job that never trains would be left behind."""
    if spec.output.pvc is not None:
        return None
    output = spec.output
    return claim(
        parent, OUTPUT_COMPONENT, output.size, output.storage_class_name, output.reclaim_policy
    )


def setup_children(
    parent: Mapping[str, Any], spec: FineTuneJobSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """Everything the pre-flight and training Jobs need, all owned by the FineTuneJob;
    applied before (and never after) training starts. The output claim is not among them."""
    name = parent["metadata"]["name"]
    children: list[dict[str, Any]] = [
        config_map(
            parent,
            CONFIG_COMPONENT,
            {"config.json": train_config(parent, spec).model_dump(mode="json")},
        )
    ]
    progress = config_map(parent, PROGRESS_COMPONENT, {})
    progress["data"] = {PROGRESS_KEY: "{}"}
    children.append(progress)
    # The trainer may update exactly one object: its own progress ConfigMap.
    account = child_name(name, TRAINER_COMPONENT)
    children += [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": child_metadata(parent, TRAINER_COMPONENT),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": child_metadata(parent, TRAINER_COMPONENT),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [progress["metadata"]["name"]],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": child_metadata(parent, TRAINER_COMPONENT),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": account,
                    "namespace": parent["metadata"]["namespace"],
                }
            ],
        },
    ]
    return children


def _volumes(
    parent_name: str, spec: FineTuneJobSpec, with_output: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": child_name(parent_name, CONFIG_COMPONENT)}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    dataset = spec.dataset
    if dataset.config_map is not None:
        volumes.append({"name": "dataset", "configMap": {"name": dataset.config_map.name}})
        mounts.append({"name": "dataset", "mountPath": DATASET_DIR, "readOnly": True})
    elif dataset.pvc is not None:
        volumes.append(
            {
                "name": "dataset",
                "persistentVolumeClaim": {"claimName": dataset.pvc.claim_name, "readOnly": True},
            }
        )
        mounts.append({"name": "dataset", "mountPath": DATASET_DIR, "readOnly": True})
    base = spec.base_model
    if base.pvc is not None:
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": base.pvc.claim_name, "readOnly": True},
            }
        )
        mounts.append({"name": "model", "mountPath": MODEL_DIR, "readOnly": True})
    if base.token_secret_ref is not None:
        ref = base.token_secret_ref
        volumes.append(secret_volume("hub-token", ref.name, ref.key, "token"))
        mounts.append({"name": "hub-token", "mountPath": f"{SECRETS_DIR}/hub", "readOnly": True})
    if with_output:
        output_claim, _ = output_location(parent_name, spec)
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": output_claim}})
        mounts.append({"name": "output", "mountPath": OUTPUT_DIR})
    return volumes, mounts


def _job(
    parent: Mapping[str, Any],
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    component: str,
    name: str,
    args: list[str],
    pod_spec: dict[str, Any],
    container_extra: dict[str, Any],
    with_output: bool,
    api_access: bool = False,
) -> dict[str, Any]:
    parent_name = parent["metadata"]["name"]
    volumes, mounts = _volumes(parent_name, spec, with_output)
    # Volumes and mounts a caller adds come after the common ones.
    pod_spec = dict(pod_spec)
    container_extra = dict(container_extra)
    volumes += pod_spec.pop("volumes", [])
    mounts += container_extra.pop("volumeMounts", [])
    meta = child_metadata(parent, component)
    meta["name"] = name
    container = {
        "name": component,
        "image": spec.resources.image or config.images.finetune,
        "args": args,
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **container_extra,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            # Retries are the operator's: it tells an out-of-memory exit from an eviction.
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels(parent["kind"], parent_name, component)},
                "spec": restricted(
                    {
                        "restartPolicy": "Never",
                        "containers": [container],
                        "volumes": volumes,
                        **pod_spec,
                    },
                    api_access=api_access,
                ),
            },
        },
    }


def preflight_job(
    parent: Mapping[str, Any], spec: FineTuneJobSpec, config: OperatorConfig
) -> dict[str, Any]:
    """Dataset validation and step counting on a CPU node: no GPU time is spent on a dataset
    that cannot train."""
    name = child_name(parent["metadata"]["name"], PREFLIGHT_COMPONENT)
    args = ["preflight", "--config", f"{CONFIG_DIR}/config.json"]
    resources = {"resources": container_resources(None, PREFLIGHT_REQUESTS)}
    return _job(
        parent, spec, config, PREFLIGHT_COMPONENT, name, args, {}, resources, with_output=False
    )


def train_job_name(parent_name: str, attempt: int) -> str:
    return child_name(parent_name, f"{TRAIN_COMPONENT}-{attempt}")


def train_job(
    parent: Mapping[str, Any], spec: FineTuneJobSpec, config: OperatorConfig, attempt: int
) -> dict[str, Any]:
    """One training attempt on a GPU node; a retried attempt resumes from the checkpoint."""
    parent_name = parent["metadata"]["name"]
    res = spec.resources
    resources = container_resources(res, TRAIN_REQUESTS)
    pod_spec = placement(res) | {"serviceAccountName": child_name(parent_name, TRAINER_COMPONENT)}
    with_gpus(resources, pod_spec, res.gpus, res.gpu_resource_name)
    if spec.active_deadline_seconds:
        pod_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    args = ["train", "--config", f"{CONFIG_DIR}/config.json"]
    extra: dict[str, Any] = {"resources": resources}
    if res.gpus > 1:  # one process per GPU under torchrun
        pod_spec["volumes"] = [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}
        ]
        extra["volumeMounts"] = [{"name": "dshm", "mountPath": SHM_DIR}]
    job = _job(
        parent,
        spec,
        config,
        TRAIN_COMPONENT,
        train_job_name(parent_name, attempt),
        args,
        pod_spec,
        extra,
        with_output=True,
        # The trainer patches its progress ConfigMap with its ServiceAccount's token.
        api_access=True,
    )
    job["metadata"]["labels"][ATTEMPT_LABEL] = str(attempt)
    job["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(spec)}
    return job
