"""The operator <-> inference server contract: `ServeConfig`, rendered by the operator into
the PhiDeployment's ConfigMap (`serve.json`) and loaded by `python -m phiops_serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_FILE = "serve.json"
DEFAULT_PORT = 8000
DEFAULT_ADMIN_PORT = 8001
# The LoRA ranks vLLM's kernels are built for; an adapter's rank is rounded up to one.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
CONTEXT_PLACEHOLDER = "{context}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdapterConfig(_Strict):
    """One LoRA adapter served under its own model name."""

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    source: str | None = None
    """Where it came from (`fineTuneJob/<name>`, `pvc/<claim>/<path>`), for logs and metrics."""
    sha256: str | None = None
    """Expected digest of adapter_model.safetensors; a mismatch fails loading."""


class RerankConfig(_Strict):
    """Re-order the first `candidates` hits with a sentence-transformers CrossEncoder before
    the `top_k` cut."""

    model: str = Field(min_length=1)
    """Model name or path of the CrossEncoder."""
    candidates: int = Field(default=20, ge=1, le=200)
    device: str = "cpu"


class RetrievalConfig(_Strict):
    """Retrieval-augmented generation from one knowledge base (a Milvus collection/alias)."""

    uri: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    database: str = "default"
    token_file: str | None = None
    """File holding the Milvus token (a mounted Secret key); none for the embedded store."""
    top_k: int = Field(default=4, ge=1, le=100)
    score_threshold: float | None = None
    hybrid: bool = True
    """Fuse dense and BM25 keyword search (where the collection has full text; dense search
    only where it has none)."""
    neighbors: int = Field(default=1, ge=0, le=8)
    """Small-to-big: each hit is handed over with up to this many chunks of its document
    either side."""
    rerank: RerankConfig | None = None
    ef: int | None = Field(default=None, ge=1, le=32768)
    """Search breadth of a graph index (HNSW, a server's AUTOINDEX) for the dense search,
    raised to the results asked for; None: the retriever's default (64)."""
    citations: bool = True
    """Return the retrieved sources with each answer."""
    model: str | None = None
    """The embedding model; it must match the knowledge base's. None: the retriever's default."""
    device: str = "cpu"
    """Device of the query embedding model."""


class EngineConfig(_Strict):
    """vLLM engine settings. Changing any of them restarts the engine (the pods roll);
    adapters are loaded and unloaded without a restart."""

    max_model_len: int | None = Field(default=None, ge=16)
    """Longest prompt plus completion, in tokens; None: the model's own limit."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Share of each GPU's memory vLLM may take (weights, activations, KV cache)."""
    kv_cache_space_gib: int | None = Field(default=None, ge=1)
    """CPU only: whole GiB of memory for the KV cache (VLLM_CPU_KVCACHE_SPACE); None: 1 GiB
    per 16 sequences, at least 1 (vLLM's own default takes far more)."""
    max_num_seqs: int | None = Field(default=None, ge=1)
    """Sequences batched together at most; None: vLLM's default."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs one replica spreads the model over."""
    enforce_eager: bool | None = None
    """Skip CUDA graphs and torch.compile: faster start, slower steady state. None: eager on
    vLLM's CPU build (compiling at start takes minutes there), compiled on GPUs."""
    enable_prefix_caching: bool = True
    max_loras: int | None = Field(default=None, ge=1)
    """Adapters in one batch at most; None: sized from the adapters served."""
    max_lora_rank: int | None = None
    """Largest adapter rank the engine accepts; None: from the adapters found on disk."""
    seed: int = 0

    @model_validator(mode="after")
    def _rank(self) -> EngineConfig:
        if self.max_lora_rank is not None and self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {list(LORA_RANKS)}")
        return self


class ServeConfig(_Strict):
    base_model_path: str = Field(min_length=1)
    """A folder holding the model, or a model-hub id."""
    base_model_name: str = Field(min_length=1)
    """The model id clients ask for to get the base model (no adapter)."""
    revision: str | None = None
    """Model-hub revision, when `base_model_path` is a hub id."""
    hub_token_file: str | None = None
    """File holding a model-hub token (a mounted Secret key)."""
    adapters: list[AdapterConfig] = Field(default_factory=list)
    max_new_tokens: int = Field(default=512, ge=1)
    """The most tokens one completion may produce, whatever the request asks for."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    quantize: Literal["none", "nf4"] = "none"
    """`nf4`: load the base 4-bit with bitsandbytes (vLLM on CUDA only)."""
    device: str = "auto"
    """`auto`: what the installed vLLM is built for (CUDA or CPU)."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    max_concurrent_requests: int = Field(default=64, ge=1)
    """Requests admitted at once; more are refused with 429."""
    retrieval: RetrievalConfig | None = None
    system_prompt: str | None = None
    context_template: str | None = None
    """How the retrieved chunks enter the system prompt; `{context}` is replaced by them."""
    host: str = "0.0.0.0"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    admin_port: int = Field(default=DEFAULT_ADMIN_PORT, ge=0, le=65535)
    """Adapter loading and unloading (`PUT`/`DELETE /v1/adapters/{name}`), for the operator:
    not behind the Service."""
    work_dir: str | None = None
    """Writable folder for the engine's caches and IPC sockets; None: a temporary one."""

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        names = [self.base_model_name, *(a.name for a in self.adapters)]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        if self.context_template is not None and CONTEXT_PLACEHOLDER not in self.context_template:
            raise ValueError(f"context_template must contain {CONTEXT_PLACEHOLDER}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> ServeConfig:
        return cls.model_validate_json(Path(path).read_text())
