"""The inference server's config: which model, which adapters, how to answer."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdapterConfig(_Strict):
    """One LoRA adapter served under its own model name."""

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)


class RetrievalConfig(_Strict):
    """Retrieval-augmented generation from one knowledge base (a Milvus collection/alias)."""

    uri: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    top_k: int = Field(default=4, ge=1, le=100)
    score_threshold: float | None = None
    model: str | None = None
    """The embedding model; it must match the knowledge base's. None: the retriever's default."""


class ServeConfig(_Strict):
    base_model_path: str = Field(min_length=1)
    base_model_name: str = Field(min_length=1)
    """The model id clients ask for to get the base model (no adapter)."""
    adapters: list[AdapterConfig] = Field(default_factory=list)
    max_new_tokens: int = Field(default=512, ge=1)
    """The most tokens one completion may produce, whatever the request asks for."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    """`auto`: CUDA when available, else CPU."""
    retrieval: RetrievalConfig | None = None
    system_prompt: str | None = None
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)

    @model_validator(mode="after")
    def _unique_names(self) -> ServeConfig:
        names = [self.base_model_name, *(a.name for a in self.adapters)]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> ServeConfig:
        return cls.model_validate_json(Path(path).read_text())
