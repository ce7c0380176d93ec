"""The FineTuneJob's children, rendered purely from the spec."""

from typing import Any

from phiops_operator.builders import fine_tune_job as ftj
from phiops_operator.config import OperatorConfig
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_workload.finetune import TrainJobConfig

PARENT: dict[str, Any] = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tone", "namespace": "ml", "uid": "u-9", "generation": 1},
}


def spec(**extra: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
            "dataset": {"configMap": {"name": "data", "key": "train.jsonl"}},
            **extra,
        }
    )


def children(the_spec: FineTuneJobSpec) -> dict[tuple[str, str], dict[str, Any]]:
    built = ftj.setup_children(PARENT, the_spec, OperatorConfig())
    return {(c["kind"], c["metadata"]["name"]): c for c in built}


def test_setup_renders_the_trainer_contract_with_mounted_paths() -> None:
    built = children(spec())
    config = TrainJobConfig.model_validate_json(
        built[("ConfigMap", "tone-train-config")]["data"]["config.json"]
    )
    assert config.base_model.path == "/phiops/model/tiny"
    assert config.dataset.path == "/phiops/dataset/train.jsonl"
    assert config.output_dir == "/phiops/output"
    assert config.progress is not None and config.progress.config_map == "tone-progress"
    assert config.lora.target_modules == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def test_trainer_may_update_only_its_progress_config_map() -> None:
    built = children(spec())
    role = built[("Role", "tone-trainer")]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["tone-progress"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = built[("RoleBinding", "tone-trainer")]
    assert binding["subjects"][0]["name"] == "tone-trainer"


def test_output_claim_follows_the_reclaim_policy() -> None:
    kept = ftj.output_claim(PARENT, spec())
    assert kept is not None and kept["metadata"]["name"] == "tone-output"
    assert "ownerReferences" not in kept["metadata"]
    dropped = ftj.output_claim(PARENT, spec(output={"reclaimPolicy": "Delete"}))
    assert dropped is not None and dropped["metadata"]["ownerReferences"][0]["uid"] == "u-9"
    assert ftj.output_claim(PARENT, spec(output={"pvc": {"claimName": "mine"}})) is None


def test_setup_children_are_all_owned_and_leave_the_output_claim_out() -> None:
    # A job that never trains (inputs missing or invalid) leaves nothing behind.
    built = children(spec())
    assert all(kind != "PersistentVolumeClaim" for kind, _ in built)
    assert all(c["metadata"]["ownerReferences"][0]["uid"] == "u-9" for c in built.values())


def test_training_attempt_asks_for_gpus_and_tolerates_the_gpu_taint() -> None:
    job = ftj.train_job(PARENT, spec(resources={"gpus": 2}), OperatorConfig(), attempt=1)
    assert job["metadata"]["name"] == "tone-train-1"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["serviceAccountName"] == "tone-trainer"
    assert job["spec"]["backoffLimit"] == 0  # retries are the operator's decision
    assert job["metadata"]["annotations"][ftj.SPEC_HASH_ANNOTATION] == ftj.spec_hash(
        spec(resources={"gpus": 2})
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/phiops", "/phiops/dataset", "/phiops/model", "/phiops/output"} <= mounts


def test_preflight_runs_without_gpus_or_the_output_volume() -> None:
    job = ftj.preflight_job(PARENT, spec(), OperatorConfig())
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources == {"requests": ftj.PREFLIGHT_REQUESTS}, "no GPU, default requests only"
    assert "tolerations" not in pod
    assert all(v["name"] != "output" for v in pod["volumes"])
    assert pod["containers"][0]["args"][0] == "preflight"


def test_a_later_field_at_its_default_keeps_the_spec_hash() -> None:
    """Fields added after the first release (LATER_DEFAULTS) do not change the hash of a job
    that leaves them at their default: an upgrade reports no finished job as changed."""
    plain = spec()
    assert ftj.spec_hash(spec(training={"paddingFree": True})) == ftj.spec_hash(plain)
    assert ftj.spec_hash(spec(training={"paddingFree": False})) != ftj.spec_hash(plain)
    config = ftj.train_config(PARENT, spec(training={"packing": True, "paddingFree": False}))
    assert config.training.packing and not config.training.padding_free


def test_several_gpus_run_one_process_each_with_shared_memory_for_nccl() -> None:
    two = spec(resources={"gpus": 2})
    config = ftj.train_config(PARENT, two)
    assert config.processes == 2  # the trainer starts torchrun with 2 processes
    assert ftj.train_config(PARENT, spec(resources={"gpus": 1})).processes == 1
    assert ftj.train_config(PARENT, spec(resources={"gpus": 0})).processes == 1  # CPU: one
    pod = ftj.train_job(PARENT, two, OperatorConfig(), attempt=1)["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm" and "/etc/phiops" in mounts  # added, none replaced
    one = ftj.train_job(PARENT, spec(), OperatorConfig(), attempt=1)["spec"]["template"]["spec"]
    assert all(v["name"] != "dshm" for v in one["volumes"])
