"""FineTuneJob: a GPU-scheduled pod trains a LoRA or QLoRA adapter on a Phi-3 base model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from phiops_operator.models.base import (
    CommonStatus,
    KubeModel,
    ModelSource,
    PodSettings,
    Quantity,
    ResourceName,
    VolumePath,
    exactly_one,
)

# Phi-3 fuses q/k/v and gate/up: generic defaults (q_proj, v_proj) match nothing on it.
PHI3_TARGET_MODULES = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# More optimizer steps than any real run takes: a bound the API server can check.
MAX_STEPS = 10_000_000


class ConfigMapKey(KubeModel):
    """One key of a ConfigMap."""

    name: ResourceName
    """Name of the ConfigMap."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """Key holding the data."""


class Dataset(KubeModel):
    """Training data as JSON Lines; set exactly one of configMap, pvc or url."""

    config_map: ConfigMapKey | None = None
    """A JSONL file stored in a ConfigMap key (small datasets)."""
    pvc: VolumePath | None = None
    """A JSONL file on a PersistentVolumeClaim."""
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = None
    """A JSONL file fetched over HTTP(S)."""
    format: Literal["messages", "promptCompletion", "instruction"] = "messages"
    """`messages`: OpenAI-style chat (`{"messages": [{"role", "content"}]}`); `promptCompletion`:
    `{"prompt", "completion"}`; `instruction`: `{"instruction", "input", "output"}`."""
    validation_split: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    """Fraction of records held out for evaluation."""
    max_seq_length: Annotated[int, Field(ge=32, le=131072)] = 1024
    """Longest tokenized record, after Phi-3's chat template; longer ones are reported."""

    @model_validator(mode="after")
    def _one_location(self) -> Dataset:
        exactly_one(self, "config_map", "pvc", "url")
        return self


class LoraSettings(KubeModel):
    """Low-rank adapter settings."""

    r: Annotated[int, Field(ge=1, le=1024)] = 16
    """Adapter rank."""
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the adapter's input."""
    target_modules: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", max_length=128)]],
        Field(min_length=1, max_length=64),
    ] = Field(default_factory=lambda: list(PHI3_TARGET_MODULES))
    """Modules that get adapters; defaults to Phi-3's fused projection names."""


class Quantization(KubeModel):
    """4-bit quantization of the base model (method qlora)."""

    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; nf4 suits normally distributed weights."""
    double_quant: bool = True
    """Also quantize the quantization constants (saves about 0.4 bit per weight)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Precision of the matrix multiplications."""
    unquantized_dtype: Literal["float32", "compute"] = "float32"
    """Precision of the weights left unquantized (embeddings, output head, norms), and so of
    the activations kept between layers: `float32`, as peft's k-bit preparation casts them, or
    `compute`, the compute dtype, as LoRA trains them (less memory: by the status estimate
    about 2.2 GiB less for Phi-3-mini at 4k tokens per step; not yet measured on a GPU)."""


class Training(KubeModel):
    """Optimisation settings."""

    epochs: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """Passes over the training split (ignored when maxSteps is set)."""
    max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    """Stop after this many optimizer steps."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    """Peak learning rate."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule."""
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    """Fraction of steps spent warming up."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 4
    """Records per device per step."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=4096)] = 4
    """Steps whose gradients are summed before an optimizer update."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, about 20-30% slower."""
    packing: bool = False
    """Pack several short records into one sequence (no example is cut; each attends only to
    itself)."""
    padding_free: bool = True
    """With packing, on a GPU with flash-attn or flex_attention: one row per micro-batch with
    no padding and no mask (variable-length attention keeps the records apart). Elsewhere, or
    when false: packed rows padded to the batch's longest, with a block-diagonal mask."""
    fused_kernels: Literal["auto", "on", "off"] = "auto"
    """Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, a linear cross-entropy that never
    holds the full logits): `auto` uses them on a GPU when the image has liger-kernel; `on`
    asks for them (a warning in the log says why when they cannot run, e.g. on CPU); `off`
    keeps the plain path."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    """Random seed."""
    eval_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    """Evaluate every N steps (needs a validation split); at each epoch end when empty."""
    save_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 50
    """Checkpoint every N steps; a restarted pod resumes from the last checkpoint."""
    logging_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 10
    """Report progress every N steps."""


class TrainingResources(PodSettings):
    """Placement and size of the training pod."""

    gpus: Annotated[int, Field(ge=0, le=64)] = 1
    """GPUs requested (0 trains on CPU: only for tiny models and tests). More than one trains
    data-parallel in the one pod: one process per GPU under torchrun (DDP), `batchSize` per
    GPU, so the effective batch is gpus x batchSize x gradientAccumulationSteps."""
    gpu_resource_name: Annotated[
        str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ] = "nvidia.com/gpu"
    """Extended resource name of the GPU."""
    gpu_memory: Quantity | None = None
    """Memory of one GPU, e.g. `80Gi`; when set, a job whose estimate does not fit fails early
    with InsufficientGPUMemory."""


class Output(KubeModel):
    """Where the adapter is written."""

    pvc: VolumePath | None = None
    """An existing claim and path; by default the operator creates a claim named after the
    resource."""
    size: Quantity = "5Gi"
    """Size of the claim the operator creates."""
    storage_class_name: ResourceName | None = None
    """StorageClass of the claim the operator creates."""
    reclaim_policy: Literal["Retain", "Delete"] = "Retain"
    """On deletion, `Delete` removes the claim the operator created; `Retain` keeps it."""


class FineTuneJobSpec(KubeModel):
    """Desired state of a FineTuneJob. Immutable once training started."""

    base_model: ModelSource = Field(default_factory=ModelSource)
    """The Phi-3 base model."""
    dataset: Dataset
    """Training data."""
    method: Literal["qlora", "lora"] = "qlora"
    """`qlora`: LoRA over a 4-bit base (far less GPU memory, somewhat slower); `lora`: LoRA over
    a 16-bit base."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """Adapter settings."""
    quantization: Quantization = Field(default_factory=Quantization)
    """4-bit settings (method qlora only)."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings."""
    resources: TrainingResources = Field(default_factory=TrainingResources)
    """GPU, placement and image of the training pod."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Retries after a pod failure (eviction, preemption, node loss); out-of-memory burns none."""
    active_deadline_seconds: Annotated[int, Field(ge=60, le=366 * 24 * 3600)] | None = None
    """Fail the job when training takes longer than this."""
    output: Output = Field(default_factory=Output)
    """Where the adapter goes."""

    @model_validator(mode="after")
    def _consistent(self) -> FineTuneJobSpec:
        if self.training.eval_steps is not None and self.dataset.validation_split == 0:
            raise ValueError("training.evalSteps needs dataset.validationSplit > 0")
        if self.resources.gpu_memory is not None and self.resources.gpus == 0:
            raise ValueError("resources.gpuMemory is set but resources.gpus is 0")
        return self


class Progress(KubeModel):
    """Training progress, updated while the pod runs."""

    model_config = ConfigDict(frozen=False)

    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps done."""
    total_steps: Annotated[int, Field(ge=0)] | None = None
    """Optimizer steps planned."""
    epoch: Annotated[float, Field(ge=0)] | None = None
    """Epochs done (fractional)."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest evaluation loss."""
    tokens_per_second: Annotated[float, Field(ge=0)] | None = None
    """Training throughput."""
    eta_seconds: Annotated[float, Field(ge=0)] | None = None
    """Estimated time left."""
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """step / totalSteps, for printer columns."""


class DatasetReport(KubeModel):
    """What pre-flight validation found in the dataset."""

    model_config = ConfigDict(frozen=False)

    records: Annotated[int, Field(ge=0)] = 0
    """Usable records."""
    invalid: Annotated[int, Field(ge=0)] = 0
    """Empty, malformed or over-long records."""
    sha256: str | None = None
    """Digest of the dataset file."""
    problems: list[str] | None = None
    """First problems found, each with its line number."""


class AdapterArtifact(KubeModel):
    """The trained adapter."""

    model_config = ConfigDict(frozen=False)

    claim_name: str | None = None
    """Claim holding the adapter."""
    path: str | None = None
    """Folder of the adapter inside the claim."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of adapter_model.safetensors."""
    sha256: str | None = None
    """Digest of adapter_model.safetensors."""


class FineTuneJobStatus(CommonStatus):
    """Observed state of a FineTuneJob."""

    phase: Literal["Pending", "Validating", "Running", "Succeeded", "Failed"] | None = None
    """Lifecycle phase."""
    progress: Progress | None = None
    """Training progress."""
    dataset: DatasetReport | None = None
    """Pre-flight dataset report."""
    estimated_gpu_memory: str | None = None
    """Estimated peak GPU memory per device, e.g. `9.6Gi`."""
    adapter: AdapterArtifact | None = None
    """Where the adapter is, once trained."""
    restarts: Annotated[int, Field(ge=0)] | None = None
    """Training pods restarted (they resume from the last checkpoint)."""
    start_time: str | None = None
    """When training started (RFC 3339)."""
    completion_time: str | None = None
    """When training finished (RFC 3339)."""
    spec_hash: str | None = None
    """Digest of the spec training started with; a later change is reported, not applied."""
