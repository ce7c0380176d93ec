"""Which precision the embedding model computes in when the KnowledgeBase says `auto`.

bf16 autocast pays only where the hardware multiplies bf16 natively: on a CPU with AMX or
AVX512-BF16 it measured 2-2.8x faster than float32 at cosine 0.9999; on one without (AVX2
only) torch emulates it and it is slower. So `auto` asks the hardware, never guesses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16"]
# CPU features that give native bf16 matrix products (x86: AMX, AVX512-BF16; Arm: BF16).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's own detection, else /proc/cpuinfo (Linux)."""
    try:
        import torch

        # torch's CPU capability report (it names amx_bf16 and avx512_bf16 on x86).
        capability = torch._C._cpu._get_cpu_capability()
        flags = {name for name, value in capability.items() if value is True}
        if flags:
            return flags
    except Exception:  # an older torch or a build without the report: read the kernel's
        log.debug("torch has no CPU capability report; reading %s", CPUINFO)
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_supports_bf16(flags: set[str] | None = None) -> bool:
    return bool(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def resolve_precision(setting: str, device: str) -> Precision:
    """The precision to compute in for `setting` (`auto`, `float32`, `bfloat16`)."""
    if setting == "float32":
        return "float32"
    if setting == "bfloat16":
        return "bfloat16"
    if setting != "auto":
        raise ValueError(f"precision must be auto, float32 or bfloat16, not {setting!r}")
    if device.startswith("cuda"):
        import torch

        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bfloat16" if native else "float32"
    return "bfloat16" if cpu_supports_bf16() else "float32"
