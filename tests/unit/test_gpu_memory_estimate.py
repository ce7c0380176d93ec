"""The FineTuneJob's GPU memory estimate (`status.estimatedGpuMemory`) against the peaks
measured on an NVIDIA H200 with Phi-3-mini's shape (random bf16 weights, LoRA r 16, gradient
checkpointing, the plain stack: no fused kernels; `torch.cuda.max_memory_allocated`), as
filed in issue 13 from `benchmarks/bench_finetune.py --gpu`."""

from __future__ import annotations

import pytest
from phiops_workload.finetune import (
    CUDA_CONTEXT_BYTES,
    GIB,
    PHI3_SHAPES,
    estimate_gpu_memory_bytes,
    phi3_shape,
)

MINI = "microsoft/Phi-3-mini-4k-instruct"
# (method, rows per micro-batch, tokens per row) -> measured peak, GiB
MEASURED_H200 = {
    ("lora", 1, 1024): 8.03,
    ("lora", 1, 4096): 9.73,
    ("lora", 2, 4096): 11.99,
    ("qlora", 1, 1024): 3.76,
    ("qlora", 1, 4096): 6.02,
    ("qlora", 2, 4096): 9.04,
}


def allocated_gib(method: str, rows: int, tokens: int, **kwargs: bool) -> float:
    """The estimate less the CUDA context, which torch's peak does not count."""
    total = estimate_gpu_memory_bytes(MINI, method, rows, tokens, 16, True, **kwargs)  # type: ignore[arg-type]
    return (total - CUDA_CONTEXT_BYTES) / GIB


@pytest.mark.parametrize(("key", "measured"), sorted(MEASURED_H200.items()))
def test_the_estimate_matches_the_measured_peak(key: tuple[str, int, int], measured: float) -> None:
    method, rows, tokens = key
    estimate = allocated_gib(method, rows, tokens)
    # The issue asks for 15%; the model below is within 2% of every measured point.
    assert abs(estimate / measured - 1) < 0.02, f"{key}: {estimate:.2f} GiB vs {measured}"


def test_the_minis_shape_adds_up_to_its_parameter_count() -> None:
    # (small and medium shape attention differently: grouped-query heads, blocksparse)
    for name in (MINI, "microsoft/Phi-3-mini-128k-instruct"):
        s = PHI3_SHAPES[name]
        counted = phi3_shape(s["hidden"], s["intermediate"], s["layers"], s["vocab"])
        assert abs(counted["params"] / s["params"] - 1) < 0.001, name
        assert {k: v for k, v in counted.items() if k != "params"} == {
            k: v for k, v in s.items() if k != "params"
        }


def test_a_fused_loss_drops_the_logits_and_qlora_halves_the_memory() -> None:
    plain = allocated_gib("lora", 2, 4096)
    fused = allocated_gib("lora", 2, 4096, fused_loss=True)
    logits = 8192 * 32064 * 10 / GIB  # bf16 logits, their fp32 copy and its gradient
    assert plain - fused > 0.9 * logits
    assert allocated_gib("qlora", 1, 4096) / allocated_gib("lora", 1, 4096) < 0.65
    no_checkpointing = estimate_gpu_memory_bytes(MINI, "lora", 1, 4096, 16, False)
    assert no_checkpointing > estimate_gpu_memory_bytes(MINI, "lora", 1, 4096, 16, True)


def test_unquantized_weights_in_the_compute_dtype_would_meet_the_qlora_memory_aim() -> None:
    """A prediction from the model above (issue 13's aim: QLoRA <= 0.55x LoRA at 4k), owed to a
    measurement on a GPU."""
    upcast = allocated_gib("qlora", 1, 4096)
    kept = allocated_gib("qlora", 1, 4096, unquantized_fp32=False)
    head_and_stream = (2 * 32064 * 3072 * 2 + 4096 * 3072 * 2 * 32) / GIB
    assert upcast - kept == pytest.approx(head_and_stream, rel=1e-6)
    assert kept / allocated_gib("lora", 1, 4096) < 0.55
