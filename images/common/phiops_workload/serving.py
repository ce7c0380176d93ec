"""The operator <-> inference server contract: `ServeConfig`, rendered by the operator into
the PhiDeployment's ConfigMap (`serve.json`) and loaded by `python -m phiops_serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_FILE = "serve.json"
DEFAULT_PORT = 8000
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


class RetrievalConfig(_Strict):
    """Retrieval-augmented generation from one knowledge base (a Milvus collection/alias)."""

    uri: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    database: str = "default"
    token_file: str | None = None
    """File holding the Milvus token (a mounted Secret key); none for the embedded store."""
    top_k: int = Field(default=4, ge=1, le=100)
    score_threshold: float | None = None
    hybrid: bool = False
    """Fuse dense and BM25 keyword search (where the collection has full text)."""
    citations: bool = True
    """Return the retrieved sources with each answer."""
    model: str | None = None
    """The embedding model; it must match the knowledge base's. None: the retriever's default."""
    device: str = "cpu"
    """Device of the query embedding model."""


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
    """`nf4`: load the base 4-bit with bitsandbytes (CUDA only)."""
    device: str = "auto"
    """`auto`: CUDA when available, else CPU."""
    max_concurrent_requests: int = Field(default=64, ge=1)
    """Requests admitted at once; more are refused with 429."""
    retrieval: RetrievalConfig | None = None
    system_prompt: str | None = None
    context_template: str | None = None
    """How the retrieved chunks enter the system prompt; `{context}` is replaced by them."""
    host: str = "0.0.0.0"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)

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
