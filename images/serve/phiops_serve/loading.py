"""Loading the base model and its LoRA adapters, each with its own state: one adapter that
fails (missing, corrupt, wrong digest) is reported and left out; the others serve."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from phiops_workload.serving import AdapterConfig, ServeConfig

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LoadError(Exception):
    """A model cannot be loaded; the message says why (shown by /readyz)."""


@dataclass
class ModelState:
    """One served model (the base or an adapter) as /readyz reports it."""

    name: str
    adapter: bool
    source: str | None = None
    loaded: bool = False
    sha256: str | None = None
    """The digest of the adapter's weights file as found on disk."""
    error: str | None = None

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loaded": self.loaded,
            "sha256": self.sha256,
            "error": self.error,
        }


def resolve_device(config: ServeConfig) -> str:
    if config.device != "auto":
        return config.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(config: ServeConfig, device: str) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that has it (float16 on older ones), float32 on CPU (bf16
    matmuls are slow on CPUs without bf16 instructions)."""
    if config.dtype != "auto":
        return _DTYPES[config.dtype]
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _read_secret(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as err:
        raise LoadError(f"cannot read the model hub token file: {err}") from err


def _nf4(config: ServeConfig, device: str) -> dict[str, Any]:
    """from_pretrained arguments for a 4-bit NF4 base (bitsandbytes; CUDA only here)."""
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        raise LoadError(
            f"quantize: nf4 needs a CUDA GPU (bitsandbytes 4-bit), but the device is {device!r}"
            " and no GPU is available; use quantize: none on CPU"
        )
    from transformers import BitsAndBytesConfig

    compute = resolve_dtype(config, device)
    untyped: Any = BitsAndBytesConfig  # its __init__ is untyped
    quantization = untyped(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    return {"quantization_config": quantization, "device_map": {"": device}}


def load_base(config: ServeConfig) -> tuple[Any, Any]:
    """(model, tokenizer) of the base, in eval mode on its device. Raises LoadError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(config)
    hub = {"revision": config.revision, "token": _read_secret(config.hub_token_file)}
    quantized = _nf4(config, device) if config.quantize == "nf4" else {}
    path = config.base_model_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hub)
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(config, device), **hub, **quantized
        )
    except Exception as err:  # hub errors, missing files, bad configs, out of memory...
        raise LoadError(f"cannot load the base model from {path!r}: {err}") from err
    if not quantized:  # bitsandbytes placed it already (and refuses .to())
        model.to(device)
    model.eval()
    return model, tokenizer


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


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _injected(model: Any) -> bool:
    """Whether LoRA layers were put into `model` (peft does so before reading weights)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def attach_adapter(model: Any, adapter: AdapterConfig) -> Any:
    """`model` with `adapter` added (a PeftModel from the first one on). Raises LoadError;
    a PeftModel is left serving what it served before."""
    from peft import PeftConfig, PeftModel

    try:
        kind = PeftConfig.from_pretrained(adapter.path)
    except Exception as err:
        raise LoadError(f"cannot load the adapter from {adapter.path!r}: {err}") from err
    if kind.is_prompt_learning:  # the engine generates through the LoRA-injected base
        raise LoadError(f"{adapter.path!r} is a {kind.peft_type} adapter; only LoRA is served")
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(adapter.path, adapter_name=adapter.name)
        else:
            model = PeftModel.from_pretrained(model, adapter.path, adapter_name=adapter.name)
    except Exception as err:
        if isinstance(model, PeftModel) and adapter.name in model.peft_config:
            model.delete_adapter(adapter.name)
        raise LoadError(f"cannot load the adapter from {adapter.path!r}: {err}") from err
    model.eval()
    return model


def load_models(config: ServeConfig, states: dict[str, ModelState]) -> tuple[Any, Any]:
    """(model, tokenizer): the base with every adapter that loads; `states` says which did
    and why the others did not. Raises LoadError when the base itself fails."""
    base = states[config.base_model_name]
    try:
        model, tokenizer = load_base(config)
    except LoadError as err:
        base.error = str(err)
        for adapter in config.adapters:
            states[adapter.name].error = "not loaded: the base model did not load"
        raise
    loaded = [base]
    for adapter in config.adapters:
        state = states[adapter.name]
        try:
            state.sha256 = weights_digest(adapter.path)
            check_digest(adapter, state.sha256)
            model = attach_adapter(model, adapter)
        except LoadError as err:
            log.error("adapter %s: %s", adapter.name, err)
            state.error = str(err)
            # A failed first adapter leaves LoRA layers in the bare base: start it afresh.
            if not _is_peft(model) and _injected(model):
                try:
                    model, tokenizer = load_base(config)
                except LoadError as again:
                    base.error = str(again)
                    raise
            continue
        loaded.append(state)
        log.info("adapter %s loaded from %s", adapter.name, adapter.path)
    for state in loaded:  # only now: the engine serves the model once this returns
        state.loaded = True
    return model, tokenizer
