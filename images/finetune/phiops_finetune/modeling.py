"""Loading the base model and tokenizer, and wrapping the model for LoRA or QLoRA.

- `lora`: the base in bf16 on a GPU (fp32 on CPU), LoRA adapters in fp32 on top.
- `qlora`: the base quantized to 4 bits by bitsandbytes (NF4 or FP4, optional double
  quantization, the configured compute dtype), `prepare_model_for_kbit_training` (or, with
  `unquantizedDtype: compute`, the same less its fp32 cast), then LoRA.

bitsandbytes on CPU: the first no-grad forward of a 4-bit layer in eval mode repacks its
weights for an AVX512-BF16 inference kernel that has no backward, and training afterwards
gets wrong gradients. `guard_cpu_4bit` turns that repacking off on every 4-bit layer, so an
evaluation during training cannot corrupt it. A 4-bit base is never merged into.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phiops_workload.finetune import ModelSpec, TrainJobConfig

from phiops_finetune.chat import ensure_chat_template

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("phiops_finetune.modeling")


def source(spec: ModelSpec) -> str:
    """Where from_pretrained loads: the local folder when given, else the hub name."""
    return spec.path or spec.name


def hub_kwargs(spec: ModelSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if spec.revision and not spec.path:
        kwargs["revision"] = spec.revision
    if spec.token_file:
        kwargs["token"] = Path(spec.token_file).read_text().strip()
    return kwargs


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        source(spec), **hub_kwargs(spec)
    )
    ensure_chat_template(tokenizer)
    return tokenizer


def compute_dtype(config: TrainJobConfig, on: str) -> torch.dtype:
    """The dtype matmuls run in: the quantization's compute dtype for qlora; bf16 for lora
    on a GPU; fp32 for lora on CPU (where bf16 autocast would only test a different path)."""
    import torch

    if config.method == "qlora":
        dtype: torch.dtype = getattr(torch, config.quantization.compute_dtype)
        return dtype
    return torch.bfloat16 if on == "cuda" else torch.float32


def load_model(
    config: TrainJobConfig, on: str, attention: str = "sdpa", device_index: int = 0
) -> PreTrainedModel:
    """The base model, quantized for qlora, on `on` ("cuda" or "cpu"; GPU `device_index`),
    with the attention kernel `attention` (see attention.py)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization: Any = BitsAndBytesConfig  # its __init__ is untyped

    dtype = compute_dtype(config, on)
    kwargs: dict[str, Any] = {
        **hub_kwargs(config.base_model),
        "attn_implementation": attention,
        "device_map": {"": device_index} if on == "cuda" else {"": "cpu"},
    }
    if config.method == "qlora":
        q = config.quantization
        kwargs["quantization_config"] = quantization(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    # qlora: the parts left unquantized (norms, embeddings) load in the compute dtype too;
    # prepare_model_for_kbit_training casts them to fp32 for training (unless told not to).
    kwargs["dtype"] = dtype
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        source(config.base_model), **kwargs
    )
    model.config.use_cache = False  # a cache would also hide packed sequences from the mask
    return model


def guard_cpu_4bit(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' CPU inference repacking on every 4-bit layer (see the module
    docstring); returns how many layers were guarded."""
    try:
        from bitsandbytes.nn.modules import Linear4bit
    except ImportError:  # pragma: no cover - the finetune extra installs it
        return 0
    guarded = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def prepare_in_compute_dtype(model: PreTrainedModel, checkpointing: bool) -> None:
    """peft's k-bit preparation less its fp32 cast (`quantization.unquantizedDtype: compute`):
    the base frozen and, when asked, non-reentrant activation checkpointing (which needs no
    gradient on the inputs); the unquantized weights stay in the dtype they loaded in."""
    for param in model.parameters():
        param.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def wrap_for_training(model: PreTrainedModel, config: TrainJobConfig, on: str) -> Any:
    """Freeze the base and add LoRA adapters (after k-bit preparation for qlora)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    checkpointing = config.training.gradient_checkpointing
    if config.method == "qlora":
        if config.quantization.unquantized_dtype == "float32":
            prepare: Any = prepare_model_for_kbit_training  # untyped in peft
            model = prepare(
                model,
                use_gradient_checkpointing=checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        else:
            prepare_in_compute_dtype(model, checkpointing)
        if on == "cpu":
            log.info(
                "4-bit layers guarded against CPU inference repacking: %d", guard_cpu_4bit(model)
            )
    # lora: the Trainer turns activation checkpointing on (non-reentrant: no input grads needed).
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info(
        "%s: %d trainable parameters of %d (%.3f%%), target modules %s",
        config.method,
        trainable,
        total,
        100.0 * trainable / max(total, 1),
        ",".join(config.lora.target_modules),
    )
    return peft_model
