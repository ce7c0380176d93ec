"""What the server checks on disk before it hands a model to the engine: an adapter's weights
digest (a mismatch refuses it), that it is a LoRA adapter, and its rank. Each served model
(the base or an adapter) has a `ModelState` that /readyz reports."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiops_workload.serving import LORA_RANKS, AdapterConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoadError(Exception):
    """A model cannot be loaded; the message says why (shown by /readyz)."""


@dataclass
class ModelState:
    """One served model (the base or an adapter) as /readyz reports it."""

    name: str
    adapter: bool
    source: str | None = None
    path: str | None = None
    loaded: bool = False
    sha256: str | None = None
    """The digest of the adapter's weights file as found on disk when it was loaded."""
    error: str | None = None

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loaded": self.loaded,
            "sha256": self.sha256,
            "path": self.path,
            "error": self.error,
        }


def weights_digest(path: str) -> str | None:
    """sha256 of the adapter's weights file, None when it has none (older .bin adapters)."""
    weights = Path(path) / ADAPTER_WEIGHTS
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    try:
        with weights.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as err:
        raise LoadError(f"cannot read {weights}: {err}") from err
    return digest.hexdigest()


def check_digest(adapter: AdapterConfig, found: str | None) -> None:
    if adapter.sha256 is None:
        return
    if found is None:
        raise LoadError(f"{ADAPTER_WEIGHTS} not found in {adapter.path}: cannot check its sha256")
    if found != adapter.sha256.lower():
        raise LoadError(
            f"{ADAPTER_WEIGHTS} has sha256 {found}, expected {adapter.sha256}: not loaded"
        )


def lora_rank(path: str) -> int:
    """The rank of the LoRA adapter in `path`. Raises LoadError for anything else (a missing
    or unreadable folder, a prompt-learning adapter)."""
    config_file = Path(path) / ADAPTER_CONFIG
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot load the adapter from {path!r}: {err}") from err
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "LORA":
        raise LoadError(f"{path!r} is a {kind} adapter; only LoRA adapters are served")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoadError(f"{config_file} has no valid rank 'r': {rank!r}")
    return rank


def engine_rank(rank: int) -> int:
    """The smallest rank vLLM is built for that holds `rank`."""
    for size in LORA_RANKS:
        if size >= rank:
            return size
    raise LoadError(f"LoRA rank {rank} is above the largest the engine supports ({LORA_RANKS[-1]})")
