"""PhiDeployment: serve Phi-3 with adapters and retrieval behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from phiops_workload.serving import CONTEXT_PLACEHOLDER, LORA_RANKS
from pydantic import ConfigDict, Field, model_validator

from phiops_operator.models.base import (
    CommonStatus,
    KubeModel,
    LocalObjectRef,
    ModelSource,
    PodSettings,
    ResourceName,
    VolumePath,
    exactly_one,
    unique_names,
)

ModelId = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$", max_length=63)]


class Adapter(KubeModel):
    """A LoRA adapter served beside the base model; set exactly one of fineTuneJobRef or pvc."""

    name: ModelId
    """Model id clients request in the OpenAI `model` field."""
    fine_tune_job_ref: LocalObjectRef | None = None
    """Use the adapter a FineTuneJob produced; the deployment rolls when it succeeds."""
    pvc: VolumePath | None = None
    """Use an adapter folder on a PersistentVolumeClaim."""

    @model_validator(mode="after")
    def _one_source(self) -> Adapter:
        exactly_one(self, "fine_tune_job_ref", "pvc")
        return self


class Rerank(KubeModel):
    """A sentence-transformers CrossEncoder that scores (question, chunk) pairs."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    """Model name or path the serving pods can load (e.g. a model-hub id pre-cached in the
    image, or a folder on a mounted volume)."""
    candidates: Annotated[int, Field(ge=1, le=200)] = 20
    """Retrieved chunks the model re-orders; `topK` of them are kept."""


class KnowledgeBaseRef(KubeModel):
    """Retrieval-augmented generation from a KnowledgeBase."""

    name: ResourceName
    """Name of the KnowledgeBase in the same namespace."""
    top_k: Annotated[int, Field(ge=1, le=100)] = 4
    """Chunks retrieved per question."""
    score_threshold: Annotated[float, Field(ge=-1, le=1)] | None = None
    """Drop chunks scoring below this similarity."""
    hybrid: bool = True
    """Combine dense and BM25 keyword search (RRF) where the KnowledgeBase indexes full text
    (`vectorStore.milvus.hybrid`, on by default); dense search alone where it does not."""
    neighbors: Annotated[int, Field(ge=0, le=8)] = 1
    """Small-to-big: hand each retrieved chunk over with up to this many chunks of its
    document either side (0: the chunk alone)."""
    rerank: Rerank | None = None
    """Re-order the first candidates with a cross-encoder before the `topK` cut."""
    ef: Annotated[int, Field(ge=1, le=32768)] | None = None
    """Search breadth of a graph index (HNSW, or a Milvus server's AUTOINDEX): higher finds
    more of the true nearest chunks for a little time. Empty: 64 (measured on a Milvus 2.3
    server's AUTOINDEX at 100k chunks: recall@10 0.928 at the server's own default, 0.992 at
    64, 1.000 at 256, p50 under 8 ms each). Raised to the chunks a search asks for, which
    HNSW needs; an exact (the embedded store's default) or IVF index takes none."""
    citations: bool = True
    """Return the sources (document, chunk, score) with each answer."""


class Prompt(KubeModel):
    """How retrieved context and the question are put to the model."""

    system_prompt: Annotated[str, Field(max_length=16384)] | None = None
    """System message prepended to every conversation."""
    context_template: Annotated[str, Field(max_length=16384)] | None = None
    """Template for the retrieved context; `{context}` is replaced with the numbered chunks."""

    @model_validator(mode="after")
    def _has_placeholder(self) -> Prompt:
        if self.context_template is not None and CONTEXT_PLACEHOLDER not in self.context_template:
            raise ValueError(f"contextTemplate must contain the placeholder {CONTEXT_PLACEHOLDER}")
        return self


class ServerSettings(KubeModel):
    """Inference server settings."""

    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 512
    """Upper bound on generated tokens per request (requests may ask for fewer)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights precision; `auto` picks bfloat16 on GPU and float32 on CPU."""
    quantize: Literal["none", "nf4"] = "none"
    """`nf4`: load the base 4-bit with bitsandbytes (adapters stay unmerged). GPU only: a
    PhiDeployment with `nf4` and `resources.gpus: 0` is refused (InvalidSpec)."""
    max_concurrent_requests: Annotated[int, Field(ge=1, le=65536)] = 64
    """Requests admitted at once per replica (the engine batches them, `engine.maxNumSeqs` at
    a time at most, and queues the rest); more are refused with 429 `rate_limit_exceeded`."""


# The LoRA ranks the engine's kernels are built for, as the CRD's enum.
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
assert get_args(LoraRank) == LORA_RANKS, "LoraRank must follow phiops_workload.serving"


class EngineSettings(KubeModel):
    """vLLM engine settings. Changing any of them restarts the engine: the pods roll."""

    max_model_len: Annotated[int, Field(ge=16, le=1048576)] | None = None
    """Longest prompt plus completion, in tokens; unset: the model's own context length
    (4096 for Phi-3-mini-4k). Lower it to fit the KV cache in less memory."""
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    """Share of each GPU's memory the engine may take (weights, activations, KV cache);
    lower it when something else shares the GPU."""
    kv_cache_space_gib: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        default=None, alias="kvCacheSpaceGiB"
    )
    """CPU-only pods (`resources.gpus: 0`): GiB of memory reserved for the KV cache (vLLM's
    VLLM_CPU_KVCACHE_SPACE); unset: 1 GiB per 16 sequences (at least 1). Count it in
    `resources.resources`."""
    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Sequences generated together in one batch at most; unset: vLLM's default."""
    enforce_eager: bool | None = None
    """Skip CUDA graphs and torch.compile: the pod starts faster, generates slower. Unset:
    eager on CPU-only pods (compiling at start takes minutes there), compiled on GPUs."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of a shared prompt prefix (the system prompt, retrieved context)."""
    max_loras: Annotated[int, Field(ge=1, le=256)] | None = None
    """Adapters served in one batch at most (each slot takes GPU memory); unset: sized from
    the adapters served."""
    max_lora_rank: LoraRank | None = None
    """Largest adapter rank the engine accepts, one of 1, 8, 16, 32, 64, 128, 256, 320, 512;
    unset: from the adapters present when the engine starts. Set it when an adapter of a
    higher rank may be hot-loaded later (one whose FineTuneJob is still training)."""


class ServiceSettings(KubeModel):
    """The Service in front of the pods."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """Service port of the OpenAI-compatible API."""


class ServingResources(PodSettings):
    """Placement and size of the serving pods."""

    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    """GPUs per replica."""
    gpu_resource_name: Annotated[
        str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ] = "nvidia.com/gpu"
    """Extended resource name of the GPU."""


class PhiDeploymentSpec(KubeModel):
    """Desired state of a PhiDeployment."""

    model: ModelSource = Field(default_factory=ModelSource)
    """The Phi-3 base model."""
    adapters: Annotated[list[Adapter], Field(max_length=32)] | None = None
    """LoRA adapters, switched per request by the OpenAI `model` field."""
    knowledge_base_ref: KnowledgeBaseRef | None = None
    """Retrieve from this KnowledgeBase and cite sources."""
    prompt: Prompt | None = None
    """Prompt settings."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Serving pods (scale subresource: `kubectl scale` works)."""
    resources: ServingResources = Field(default_factory=ServingResources)
    """GPU, placement and image of the serving pods."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    """Inference server settings."""
    engine: EngineSettings = Field(default_factory=EngineSettings)
    """Inference engine (vLLM) settings; the number of GPUs it spreads the model over (tensor
    parallelism) is `resources.gpus`."""
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    """Service settings."""

    @model_validator(mode="after")
    def _consistent(self) -> PhiDeploymentSpec:
        # The server lists the base and every adapter by name under /v1/models: one id each.
        unique_names(
            "adapters",
            [a.name for a in self.adapters or []],
            {self.model.name: "the base model (spec.model.name)"},
        )
        if self.server.quantize == "nf4" and self.resources.gpus == 0:
            raise ValueError(
                "server.quantize nf4 needs resources.gpus >= 1 (the engine loads a 4-bit base "
                "on GPUs only)"
            )
        if self.engine.kv_cache_space_gib is not None and self.resources.gpus > 0:
            raise ValueError(
                "engine.kvCacheSpaceGiB applies to CPU-only pods; with resources.gpus > 0 the "
                "KV cache is sized by engine.gpuMemoryUtilization"
            )
        return self


class AdapterStatus(KubeModel):
    """Observed state of one adapter."""

    model_config = ConfigDict(frozen=False)

    name: str
    """Model id of the adapter."""
    source: str | None = None
    """Where it comes from (`fineTuneJob/<name>` or `pvc/<claim>/<path>`)."""
    sha256: str | None = None
    """Digest of adapter_model.safetensors."""
    loaded: bool = False
    """Whether every ready replica has it loaded (at this sha256)."""
    loaded_replicas: Annotated[int, Field(ge=0)] | None = None
    """Ready replicas that have it loaded (at this sha256)."""
    message: str | None = None
    """Why it is not loaded (what its FineTuneJob does, what a replica says about it)."""


class KnowledgeBaseStatusRef(KubeModel):
    """The knowledge base being served."""

    model_config = ConfigDict(frozen=False)

    name: str
    """Name of the KnowledgeBase."""
    collection: str | None = None
    """Collection queried."""


class PhiDeploymentStatus(CommonStatus):
    """Observed state of a PhiDeployment."""

    replicas: Annotated[int, Field(ge=0)] | None = None
    """Serving pods that exist (scale subresource)."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Serving pods that are ready."""
    selector: str | None = None
    """Label selector of the serving pods (scale subresource)."""
    endpoint: str | None = None
    """In-cluster URL of the OpenAI-compatible API."""
    adapters: list[AdapterStatus] | None = None
    """Per-adapter state."""
    adapters_ready: str | None = None
    """Loaded / declared adapters, e.g. `2/2`, for printer columns."""
    knowledge_base: KnowledgeBaseStatusRef | None = None
    """Knowledge base and collection being served."""
