"""The serving contract turned into vLLM's engine arguments and environment: pure functions,
so what the engine is asked for is tested without starting one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiops_workload.serving import ServeConfig

from phiops_serve.loading import LoadError, engine_rank

# A retrained adapter often doubles its rank: room for that without a restart.
MIN_LORA_RANK = 16
SEQUENCES_PER_KV_GIB = 16


def resolve_dtype(config: ServeConfig, cpu: bool) -> str:
    """`auto`: the model's own precision on a GPU (bfloat16 for Phi-3), float32 on CPU (bf16
    matmuls are slow on CPUs without bf16 instructions)."""
    if config.dtype != "auto":
        return config.dtype
    return "float32" if cpu else "auto"


def lora_slots(config: ServeConfig, base_rides_adapter: bool) -> int:
    """Adapters one batch may mix (vLLM's max_loras): every adapter served, plus the base's
    zero adapter where the base answers through one (see zero_adapter.py)."""
    if config.engine.max_loras is not None:
        wanted = config.engine.max_loras
    else:
        wanted = max(1, len(config.adapters))
    return wanted + (1 if base_rides_adapter else 0)


def lora_rank_limit(config: ServeConfig, ranks: list[int]) -> int:
    """vLLM's max_lora_rank: the setting, else the largest rank on disk (at least 16)."""
    if config.engine.max_lora_rank is not None:
        return config.engine.max_lora_rank
    return engine_rank(max([MIN_LORA_RANK, *ranks]))


def engine_kwargs(
    config: ServeConfig, *, cpu: bool, max_loras: int, max_lora_rank: int
) -> dict[str, Any]:
    """Keyword arguments of vLLM's AsyncEngineArgs. Raises LoadError for what the platform
    cannot do."""
    engine = config.engine
    kwargs: dict[str, Any] = {
        "model": config.base_model_path,
        "tokenizer": config.base_model_path,
        "revision": config.revision,
        "served_model_name": [config.base_model_name],
        "dtype": resolve_dtype(config, cpu),
        "max_model_len": engine.max_model_len,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "enforce_eager": cpu if engine.enforce_eager is None else engine.enforce_eager,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "seed": engine.seed,
        # Always on, even with no adapter yet: adapters come and go without a restart.
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": max_lora_rank,
        # Adapters kept in host memory: those served, plus a reload's new version beside
        # the old one (more are read back from disk when asked for).
        "max_cpu_loras": max_loras + max(2, len(config.adapters)),
        "disable_log_stats": False,
    }
    if engine.max_num_seqs is not None:
        kwargs["max_num_seqs"] = engine.max_num_seqs
    if not cpu:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    if config.quantize == "nf4":
        if cpu:
            raise LoadError(
                "quantize: nf4 needs a CUDA GPU (bitsandbytes 4-bit in vLLM); this server runs "
                "vLLM's CPU build: use quantize: none"
            )
        kwargs["quantization"] = "bitsandbytes"
    return kwargs


def engine_environment(config: ServeConfig, work_dir: Path) -> dict[str, str]:
    """Environment vLLM reads (set before it is imported: its engine process inherits it)."""
    engine = config.engine
    kv_gib = engine.kv_cache_space_gib
    if kv_gib is None:
        kv_gib = max(1, (engine.max_num_seqs or SEQUENCES_PER_KV_GIB) // SEQUENCES_PER_KV_GIB)
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
        # Adapters are added and removed while serving; vLLM wants that said explicitly.
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        # Caches and IPC sockets in the pod's own writable volume, not $HOME or /tmp.
        "VLLM_CACHE_ROOT": str(work_dir / "vllm-cache"),
        "VLLM_RPC_BASE_PATH": str(work_dir / "ipc"),
        "TMPDIR": str(work_dir / "tmp"),
        # No usage reports: serving pods have no business calling out.
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
