"""The FineTuneJob contracts: the trainer's config, its pre-flight and training results, the
progress it publishes while training, and the GPU-memory estimate both sides compute.

Defined once here; the operator renders `TrainJobConfig` and never imports torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from phiops_workload.contracts import ResourceIdentity

# Exit codes the operator tells apart (see runtime.py for the shared ones).
EXIT_INVALID_DATASET = 4
# An input on a volume (the base model folder, the dataset file) is not there yet: the
# operator runs the pre-flight again later instead of failing the job.
EXIT_INPUT_NOT_READY = 5

REASON_INVALID_DATASET = "InvalidDataset"
REASON_GPU_OOM = "GPUOutOfMemory"
REASON_TRAINING_FAILED = "TrainingFailed"
REASON_MODEL_UNAVAILABLE = "BaseModelUnavailable"
REASON_PREFLIGHT_PASSED = "PreflightPassed"
REASON_TRAINED = "Trained"
REASON_WAITING_FOR_INPUTS = "WaitingForInputs"

PROGRESS_KEY = "progress.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Model):
    path: str
    """Local path of the JSONL file (a mounted ConfigMap key or PVC file) or an http(s) URL."""
    format: Literal["messages", "promptCompletion", "instruction"] = "messages"
    validation_split: float = 0.0
    max_seq_length: int = 1024


class LoraSpec(_Model):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = Field(
        default_factory=lambda: ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    )


class QuantizationSpec(_Model):
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    unquantized_dtype: Literal["float32", "compute"] = "float32"


class TrainingSpec(_Model):
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    batch_size: int = 4
    gradient_accumulation_steps: int = 4
    gradient_checkpointing: bool = True
    packing: bool = False
    padding_free: bool = True
    """With packing: one row per micro-batch, no padding, where a varlen kernel exists."""
    fused_kernels: Literal["auto", "on", "off"] = "auto"
    """Liger's fused kernels: auto = on a GPU when liger-kernel is installed."""
    seed: int = 42
    eval_steps: int | None = None
    save_steps: int = 50
    logging_steps: int = 10


class ModelSpec(_Model):
    name: str
    """Hub name, or the display name of a model loaded from `path`."""
    path: str | None = None
    """Local folder of the model (a mounted PVC); the hub is used when empty."""
    revision: str | None = None
    token_file: str | None = None


class ProgressTarget(_Model):
    """Where the trainer publishes progress: one ConfigMap it alone may update (its
    ServiceAccount's Role names just that object), read by the operator into status."""

    namespace: str
    config_map: str


class TrainJobConfig(_Model):
    resource: ResourceIdentity
    base_model: ModelSpec
    dataset: DatasetSpec
    method: Literal["qlora", "lora"] = "qlora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output_dir: str
    """Folder on the output volume: the adapter, provenance and checkpoints/ go here."""
    progress: ProgressTarget | None = None
    processes: int = Field(default=1, ge=1, le=64)
    """Training processes in the pod, one per GPU: more than one runs under torchrun (DDP)."""
    phiops_version: str = "0.1.0"


class DatasetReport(_Model):
    records: int
    invalid: int
    sha256: str
    problems: list[str] = Field(default_factory=list)
    """The first problems, each `line N: what is wrong` (at most 20)."""
    longest_tokens: int = 0


class PreflightFigures(_Model):
    """`WorkloadResult.figures` of the pre-flight step."""

    dataset: DatasetReport
    total_steps: int


class Progress(_Model):
    """What the trainer publishes while it trains (and the operator copies into status)."""

    step: int
    total_steps: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    resumed_from_step: int | None = None
    updated: str | None = None


class AdapterFigures(_Model):
    path: str
    size_bytes: int
    sha256: str


class TrainFigures(_Model):
    """`WorkloadResult.figures` of a finished training run."""

    adapter: AdapterFigures
    final_loss: float | None = None
    eval_loss: float | None = None
    steps: int
    resumed_from_step: int | None = None
    duration_seconds: float


# -- GPU memory estimate -----------------------------------------------------------------------

# Phi-3 family shapes the estimate knows; other models fall back to the mini's.
PHI3_SHAPES: dict[str, dict[str, int]] = {
    "microsoft/Phi-3-mini-4k-instruct": {
        "params": 3_821_079_552,
        "layers": 32,
        "hidden": 3072,
        "intermediate": 8192,
        "vocab": 32064,
    },
    "microsoft/Phi-3-mini-128k-instruct": {
        "params": 3_821_079_552,
        "layers": 32,
        "hidden": 3072,
        "intermediate": 8192,
        "vocab": 32064,
    },
    "microsoft/Phi-3-small-8k-instruct": {
        "params": 7_392_272_384,
        "layers": 32,
        "hidden": 4096,
        "intermediate": 14336,
        "vocab": 100352,
    },
    "microsoft/Phi-3-medium-4k-instruct": {
        "params": 13_960_238_080,
        "layers": 40,
        "hidden": 5120,
        "intermediate": 17920,
        "vocab": 32064,
    },
}
GIB = 1024**3


def phi3_shape(hidden: int, intermediate: int, layers: int, vocab: int) -> dict[str, int]:
    """The estimate's shape of a Phi-3 with full multi-head attention (the mini's) and untied
    embeddings: its parameter count from its dimensions."""
    params = 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * intermediate)
    return {
        "params": params,
        "layers": layers,
        "hidden": hidden,
        "intermediate": intermediate,
        "vocab": vocab,
    }


# The CUDA context and loaded kernels: on the GPU, outside what torch counts as allocated.
CUDA_CONTEXT_BYTES = GIB // 2
# Bytes per token and vocabulary entry of the plain loss: the logits in bf16, their fp32 copy
# and its gradient (2 + 4 + 4).
LOGIT_BYTES = 10
# Bytes per token and hidden unit of a fused linear cross-entropy (Liger): it computes the
# logits a chunk of tokens at a time (a chunk's fp32 logits are about tokens x hidden) and
# keeps the bf16 gradient of its input.
FUSED_LOSS_BYTES = 6


def estimate_gpu_memory_bytes(
    model: str,
    method: Literal["qlora", "lora"],
    batch_size: int,
    seq_length: int,
    lora_r: int,
    gradient_checkpointing: bool,
    shape: dict[str, int] | None = None,
    fused_loss: bool = False,
    unquantized_fp32: bool = True,
) -> int:
    """Peak GPU memory of one training step, per device: torch's peak allocation plus the
    CUDA context. A planning figure; tests/unit/test_gpu_memory_estimate.py holds it to the
    peaks measured on an H200 (within 2% for the plain stack).

    - weights: bf16 for lora; for qlora 4.5 bits per quantized parameter (NF4 + double
      quantization) and, for the input embeddings and output head that stay unquantized, 4
      bytes where peft's k-bit preparation upcasts them to fp32 (`unquantized_fp32`), else 2;
    - adapters: fp32 weights, gradients and two AdamW moments;
    - activations: with gradient checkpointing each layer's input (the residual stream, in
      bf16, or fp32 after qlora's upcast) plus one layer's working set; without it every
      layer's working set;
    - the loss: LOGIT_BYTES per token and vocabulary entry, or FUSED_LOSS_BYTES per token and
      hidden unit with a fused linear cross-entropy.
    """
    s = shape or PHI3_SHAPES.get(model, PHI3_SHAPES["microsoft/Phi-3-mini-4k-instruct"])
    params, layers, hidden, inter = s["params"], s["layers"], s["hidden"], s["intermediate"]
    vocab = s.get("vocab", 32064)
    unquantized = 2 * vocab * hidden  # input embeddings and output head (not tied in Phi-3)
    if method == "qlora":
        stream_bytes = 4 if unquantized_fp32 else 2
        weights = (params - unquantized) * 4.5 / 8 + unquantized * stream_bytes
    else:
        weights = params * 2
        stream_bytes = 2
    # LoRA on qkv, o, gate_up, down: r * (in + out) per matrix.
    per_layer = lora_r * (
        (hidden + 3 * hidden) + 2 * hidden + (hidden + 2 * inter) + (inter + hidden)
    )
    adapter = layers * per_layer * (4 + 4 + 8)  # fp32 weights + grads + two Adam moments
    tokens = batch_size * seq_length
    layer_working_set = tokens * (4 * hidden + 2 * inter) * 2  # bf16 activations of one layer
    if gradient_checkpointing:
        kept = tokens * hidden * stream_bytes * layers
    else:
        kept = layer_working_set * layers
    loss = tokens * (hidden * FUSED_LOSS_BYTES if fused_loss else vocab * LOGIT_BYTES)
    allocated = weights + adapter + kept + layer_working_set + loss
    return math.ceil(allocated + CUDA_CONTEXT_BYTES)


def format_gib(value: int) -> str:
    return f"{value / GIB:.1f}Gi"
