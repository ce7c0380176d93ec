"""What an adapter was made from: `provenance.json` beside it, and the adapter's figures.

Enough to tell two adapters apart and to redo one: the base model (name, path, revision, and a
sha256 of its weights index or config), the dataset's sha256 and counts, the method with every
hyperparameter, the final metrics, the library versions and the times.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from phiops_workload.finetune import AdapterFigures, ModelSpec, TrainJobConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PROVENANCE = "provenance.json"
# What identifies the base model's weights, best first.
FINGERPRINT_FILES = ("model.safetensors.index.json", "model.safetensors", "config.json")
# Single weight files larger than this are not hashed (their config is, instead).
MAX_HASHED_WEIGHTS = 2 * 1024**3
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _resolve(spec: ModelSpec, filename: str, **hub: Any) -> Path | None:
    if spec.path:
        candidate = Path(spec.path) / filename
        return candidate if candidate.is_file() else None
    try:
        from transformers.utils.hub import cached_file

        found = cached_file(
            spec.name,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub,
        )
    except Exception:  # any hub trouble only costs the fingerprint
        return None
    return Path(found) if found else None


def base_model_fingerprint(spec: ModelSpec, **hub: Any) -> dict[str, str]:
    """`{"file": name, "sha256": hex}` of the first fingerprint file the model has."""
    for filename in FINGERPRINT_FILES:
        path = _resolve(spec, filename, **hub)
        if path is None:
            continue
        if filename == "model.safetensors" and path.stat().st_size > MAX_HASHED_WEIGHTS:
            continue
        return {"file": filename, "sha256": sha256_file(path)}
    return {}


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def adapter_figures(output_dir: str | Path) -> AdapterFigures:
    weights = Path(output_dir) / ADAPTER_WEIGHTS
    return AdapterFigures(
        path=str(Path(output_dir)),
        size_bytes=weights.stat().st_size,
        sha256=sha256_file(weights),
    )


def build(
    config: TrainJobConfig,
    *,
    fingerprint: dict[str, str],
    resolved_revision: str | None,
    dataset: dict[str, Any],
    metrics: dict[str, Any],
    adapter: AdapterFigures,
    started: str,
    finished: str,
    device: str,
) -> dict[str, Any]:
    return {
        "phiops_version": config.phiops_version,
        "resource": config.resource.model_dump(by_alias=True),
        "base_model": {
            "name": config.base_model.name,
            "path": config.base_model.path,
            "revision": config.base_model.revision,
            "resolved_revision": resolved_revision,
            "fingerprint": fingerprint,
        },
        "dataset": {**config.dataset.model_dump(), **dataset},
        "method": config.method,
        "lora": config.lora.model_dump(),
        "quantization": config.quantization.model_dump() if config.method == "qlora" else None,
        "training": config.training.model_dump(),
        "metrics": metrics,
        "adapter": adapter.model_dump(),
        "device": device,
        "versions": versions(),
        "started": started,
        "finished": finished,
    }


def write(output_dir: str | Path, provenance: dict[str, Any]) -> Path:
    path = Path(output_dir) / PROVENANCE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
