"""Whether the trainer uses Liger's fused kernels (the `liger-kernel` package: RMSNorm, RoPE,
SwiGLU and a fused linear cross-entropy for Phi-3, applied by transformers'
`use_liger_kernel`). The fused cross-entropy never materialises the logits of the 32k
vocabulary: less time and memory. They are Triton kernels: CUDA only.

`training.fusedKernels`: `auto` (default) uses them on a GPU when the package is installed;
`on` asks for them (a warning says why not when they cannot run); `off` never.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("phiops_finetune.kernels")

SETTING = "training.fusedKernels"
INSTALL = "install the liger-kernel package in the trainer image (pip install liger-kernel)"


@dataclass(frozen=True)
class KernelChoice:
    use: bool
    why: str
    warn: bool = False


def choose(setting: str, on: str, installed: bool) -> KernelChoice:
    """The decision (pure: what the tests check)."""
    if setting == "off":
        return KernelChoice(False, f"{SETTING} is off")
    asked = setting == "on"
    if on != "cuda":
        why = "Liger's kernels are Triton kernels for GPUs: the plain path on CPU"
        if asked:
            why = f"{SETTING}: on, but there is no GPU: {why}"
        return KernelChoice(False, why, warn=asked)
    if not installed:
        return KernelChoice(
            False, f"{SETTING}: {setting}, but liger-kernel is not installed: {INSTALL}", warn=True
        )
    return KernelChoice(True, "Liger's fused kernels (RMSNorm, RoPE, SwiGLU, linear cross-entropy)")


def installed() -> bool:
    from transformers.utils.import_utils import is_liger_kernel_available

    return bool(is_liger_kernel_available())


def plan(setting: str, on: str) -> KernelChoice:
    chosen = choose(setting, on, installed())
    (log.warning if chosen.warn else log.info)("fused kernels %s: %s", chosen.use, chosen.why)
    return chosen
