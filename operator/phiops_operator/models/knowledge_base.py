"""KnowledgeBase: documents -> chunks -> embeddings -> a Milvus collection."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from phiops_operator.models.base import (
    DNS_LABEL,
    HUB_ID,
    RELATIVE_PATH,
    CommonStatus,
    Duration,
    KubeModel,
    PodSettings,
    Quantity,
    ResourceName,
    SecretKeyRef,
    exactly_one,
    unique_names,
)

# Word pieces a sentence-transformers model reads; longer chunks are cut silently.
KNOWN_MODEL_MAX_TOKENS = {"sentence-transformers/all-MiniLM-L6-v2": 256, "all-MiniLM-L6-v2": 256}

Glob = Annotated[str, Field(min_length=1, max_length=512)]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]
CollectionName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]


class ConfigMapSource(KubeModel):
    """Documents stored as the keys of a ConfigMap (one document per key)."""

    name: ResourceName
    """Name of the ConfigMap."""
    keys: (
        Annotated[
            list[Annotated[str, Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]],
            Field(min_length=1, max_length=1024),
        ]
        | None
    ) = None
    """Only these keys; all keys when empty."""


class PvcSource(KubeModel):
    """Documents stored as files on a PersistentVolumeClaim."""

    claim_name: ResourceName
    """Name of the PersistentVolumeClaim."""
    path: Annotated[str, Field(pattern=RELATIVE_PATH, max_length=1024)] = "."
    """Folder inside the volume to read, relative to its root."""
    include: Annotated[list[Glob], Field(max_length=256)] = Field(default_factory=lambda: ["**/*"])
    """Glob patterns of files to read, relative to `path`."""
    exclude: Annotated[list[Glob], Field(max_length=256)] | None = None
    """Glob patterns of files to skip, applied after `include`."""


class HttpSource(KubeModel):
    """Documents fetched over HTTP(S), for clusters with network access."""

    urls: Annotated[list[HttpUrl], Field(min_length=1, max_length=10000)]
    """Document URLs; the format follows the extension or the Content-Type."""


class GitSource(KubeModel):
    """Documents from a Git repository, for clusters with network access."""

    url: Annotated[str, Field(pattern=r"^(https?://|ssh://|git@)[^\s]+$", max_length=2048)]
    """Repository URL (https or ssh)."""
    ref: Annotated[str, Field(max_length=256, pattern=HUB_ID)] = "main"
    """Branch, tag or commit to read."""
    subpath: Annotated[str, Field(pattern=RELATIVE_PATH, max_length=1024)] = "."
    """Folder inside the repository to read."""


class DocumentSource(KubeModel):
    """One named source of documents; set exactly one of configMap, persistentVolumeClaim,
    http or git."""

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
    """Source name, unique within the KnowledgeBase; cited with each chunk."""
    config_map: ConfigMapSource | None = None
    """Documents from a ConfigMap."""
    persistent_volume_claim: PvcSource | None = None
    """Documents from files on a PersistentVolumeClaim."""
    http: HttpSource | None = None
    """Documents from HTTP(S) URLs."""
    git: GitSource | None = None
    """Documents from a Git repository."""
    format: Literal["auto", "markdown", "text", "html", "pdf"] = "auto"
    """Document format; `auto` detects it from the extension or content type."""

    @model_validator(mode="after")
    def _one_kind(self) -> DocumentSource:
        exactly_one(self, "config_map", "persistent_volume_claim", "http", "git")
        return self


class Chunking(KubeModel):
    """How documents are cut into chunks before embedding."""

    strategy: Literal["markdown", "recursive", "fixed"] = "markdown"
    """`markdown` splits by headings first, `recursive` by paragraphs then sentences, `fixed`
    by token count only."""
    size: Annotated[int, Field(ge=16, le=8192)] = 250
    """Target chunk size in tokens of the embedding model's tokenizer. Must not exceed what the
    model reads (all-MiniLM-L6-v2 stops at 256 word pieces)."""
    overlap: Annotated[int, Field(ge=0, le=4096)] = 50
    """Tokens shared by consecutive chunks; smaller than `size`."""
    include_path: bool = True
    """Lead each chunk's embedded text with its document's path (and heading path), so a
    chunk from the middle of a document still says which document it belongs to."""
    lead_tokens: Annotated[int, Field(ge=0, le=256)] = 24
    """The document's first tokens (its title and opening words) follow the path at the head
    of each chunk's embedded text, so a chunk also says what its document is about; 0 leaves
    them out. Path, lead and heading path together take at most a quarter of a chunk."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Chunking:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class SentenceTransformersEmbedding(KubeModel):
    """A sentence-transformers model run inside the embedding pods."""

    model: Annotated[str, Field(min_length=1, max_length=256)] = (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    """Model name or path; the default is carried by the embedding image."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Device the model runs on; `cuda` needs a GPU in `pod.resources`."""
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Chunks embedded per batch. On a GPU, where batches are tokenised ahead of the model,
    a few hundred keep it busy."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute precision. `auto`: bfloat16 where the device computes it natively (autocast
    on a CPU with AMX or AVX512-BF16, bf16 weights on a GPU with bf16), float32 elsewhere;
    `float32` or `bfloat16` force one. bf16 keeps cosine >= 0.999 to float32 on real text."""


class OpenAIEmbedding(KubeModel):
    """An OpenAI-compatible embeddings endpoint."""

    base_url: Annotated[str, Field(alias="baseURL", pattern=r"^https?://[^\s]+$", max_length=2048)]
    """Base URL of the API, e.g. `https://api.openai.com/v1`."""
    model: Annotated[str, Field(min_length=1, max_length=256)] = "text-embedding-3-small"
    """Embedding model name."""
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = None
    """Requested vector size, for models that can shorten their output."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the API key."""
    batch_size: Annotated[int, Field(ge=1, le=2048)] = 64
    """Chunks sent per request."""


class Embedding(KubeModel):
    """Which model turns chunks into vectors."""

    provider: Literal["sentenceTransformers", "openai"] = "sentenceTransformers"
    """Embedding provider; its settings go in the field of the same name."""
    sentence_transformers: SentenceTransformersEmbedding = Field(
        default_factory=SentenceTransformersEmbedding
    )
    """Settings of the sentenceTransformers provider."""
    openai: OpenAIEmbedding | None = None
    """Settings of the openai provider (required when provider is openai)."""

    @model_validator(mode="after")
    def _provider_settings(self) -> Embedding:
        if self.provider == "openai" and self.openai is None:
            raise ValueError("provider openai needs the openai settings (baseURL, model)")
        return self


class EmbeddedStorage(KubeModel):
    """The volume of the embedded milvus-lite store."""

    size: Quantity = "1Gi"
    """Capacity of the PersistentVolumeClaim the operator creates."""
    storage_class_name: ResourceName | None = None
    """StorageClass of that claim; the cluster default when empty."""


class EmbeddedMilvus(KubeModel):
    """milvus-lite served from one pod with its volume, owned by the KnowledgeBase."""

    storage: EmbeddedStorage = Field(default_factory=EmbeddedStorage)
    """The store's volume."""


class MilvusIndex(KubeModel):
    """Vector index of the collection."""

    type: Literal["AUTOINDEX", "FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8"] = "AUTOINDEX"
    """Index type. AUTOINDEX: the server's choice on a Milvus server, an exact scan (FLAT) on
    the embedded store."""
    metric: Literal["COSINE", "IP", "L2"] = "COSINE"
    """Similarity metric."""


class Milvus(KubeModel):
    """A Milvus store: embedded milvus-lite by default, or a Milvus server by URI."""

    embedded: EmbeddedMilvus = Field(default_factory=EmbeddedMilvus)
    """Settings of the embedded store, used when `uri` is empty."""
    uri: Annotated[str, Field(pattern=r"^(https?|tcp|grpc)://[^\s]+$", max_length=2048)] | None = (
        None
    )
    """URI of a Milvus standalone or cluster; the embedded store is used when empty."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding the Milvus token (`user:password` or an API key)."""
    database: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)] = "default"
    """Milvus database."""
    collection: CollectionName | None = None
    """Collection (alias) readers use; derived from the namespace and name when empty."""
    index: MilvusIndex = Field(default_factory=MilvusIndex)
    """Vector index settings."""
    hybrid: bool = True
    """Also index BM25 full text, for hybrid (dense + keyword) search. On by default: it is
    the largest single gain measured on the evaluation set; a Milvus server without BM25
    (before 2.5) serves dense search only."""


class VectorStore(KubeModel):
    """Where the vectors are stored."""

    milvus: Milvus = Field(default_factory=Milvus)
    """A Milvus store."""


class Sync(KubeModel):
    """When documents are re-read."""

    interval: Duration | None = None
    """Periodic re-sync, e.g. `30m` or `6h`; only on change or on request when empty. The
    annotation `phiops.dev/sync-requested` (any new value) requests a sync now."""
    parallelism: Annotated[int, Field(ge=1, le=64)] = 1
    """Embedding pods a sync is sharded across."""


class KnowledgeBaseSpec(KubeModel):
    """Desired state of a KnowledgeBase."""

    sources: Annotated[list[DocumentSource], Field(min_length=1, max_length=64)]
    """Document sources, each named."""
    chunking: Chunking = Field(default_factory=Chunking)
    """How documents are chunked."""
    embedding: Embedding = Field(default_factory=Embedding)
    """Embedding model."""
    vector_store: VectorStore = Field(default_factory=VectorStore)
    """Vector database."""
    sync: Sync = Field(default_factory=Sync)
    """Re-sync schedule and sharding."""
    pod: PodSettings | None = None
    """Settings of the embedding pods (resources incl. GPU, placement, image)."""
    reclaim_policy: Literal["Retain", "Delete"] = "Retain"
    """On deletion, `Delete` drops the collection and volume the operator created (never ones
    it did not create); `Retain` keeps them."""

    @model_validator(mode="after")
    def _consistent(self) -> KnowledgeBaseSpec:
        unique_names("sources", [s.name for s in self.sources])
        milvus = self.vector_store.milvus
        if milvus.token_secret_ref is not None and milvus.uri is None:
            raise ValueError("vectorStore.milvus.tokenSecretRef needs vectorStore.milvus.uri")
        if self.sync.parallelism > 1 and milvus.uri is None:
            raise ValueError(
                "sync.parallelism > 1 needs an external Milvus (vectorStore.milvus.uri): "
                "the embedded store takes one writer at a time"
            )
        if self.embedding.provider == "sentenceTransformers":
            model = self.embedding.sentence_transformers.model
            limit = KNOWN_MODEL_MAX_TOKENS.get(model)
            if limit is not None and self.chunking.size > limit:
                raise ValueError(
                    f"chunking.size ({self.chunking.size}) exceeds the {limit} tokens {model} "
                    "reads; longer chunks would be silently truncated"
                )
        return self


class DocumentCounts(KubeModel):
    """Per-document outcome of the last sync."""

    model_config = ConfigDict(frozen=False)

    total: Annotated[int, Field(ge=0)] = 0
    """Documents found in the sources."""
    added: Annotated[int, Field(ge=0)] = 0
    """New documents embedded."""
    updated: Annotated[int, Field(ge=0)] = 0
    """Changed documents re-embedded."""
    deleted: Annotated[int, Field(ge=0)] = 0
    """Documents removed from the index."""
    unchanged: Annotated[int, Field(ge=0)] = 0
    """Documents skipped because their content hash did not change."""
    failed: Annotated[int, Field(ge=0)] = 0
    """Documents that could not be read or embedded."""
    failed_names: list[str] | None = None
    """Names of the failed documents (at most 20)."""


class KnowledgeBaseStatus(CommonStatus):
    """Observed state of a KnowledgeBase."""

    documents: DocumentCounts | None = None
    """Document counts of the last sync."""
    chunks: Annotated[int, Field(ge=0)] | None = None
    """Chunks in the collection."""
    collection: str | None = None
    """Collection (alias) readers query."""
    physical_collection: str | None = None
    """The versioned collection the alias points at."""
    store_uri: str | None = None
    """URI the workloads reach the store at."""
    model: str | None = None
    """Embedding model of the collection."""
    dimension: Annotated[int, Field(ge=0)] | None = None
    """Vector size."""
    last_sync_time: str | None = None
    """When the last successful sync finished (RFC 3339)."""
    last_sync_duration_seconds: Annotated[float, Field(ge=0)] | None = None
    """How long the last successful sync took."""
    sync_id: str | None = None
    """The sync these figures come from (the suffix of its Job names)."""
