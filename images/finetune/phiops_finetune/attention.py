"""Which attention kernel the trainer loads, and whether packed batches go padding-free.

Padding-free: a packed micro-batch is one row with every example end to end, no padding
token and no mask; each example's position ids restart at 0 and the attention kernel keeps
examples apart from them:

- `flash_attention_2` (the `flash-attn` package, CUDA only): variable-length attention over
  the sequence boundaries transformers reads from the position ids: exact, no mask at all;
- `flex_attention` (torch >= 2.5; compiled by torch.compile, so a C compiler must be there):
  a block-sparse mask that skips blocks across examples. torch 2.13 runs it on CPU for
  inference only ("FlexAttention does not support backward on CPU"), so CPU never trains on it.

Otherwise (CPU, or a GPU without either) the plain path stays: packed rows padded to the
batch's longest, `sdpa`, and transformers' block-diagonal mask built from the position ids.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass

log = logging.getLogger("phiops_finetune.attention")

SDPA = "sdpa"
FLEX = "flex_attention"
FLASH = "flash_attention_2"


@dataclass(frozen=True)
class Available:
    """What this process could run (found once by `available`; tests pass their own)."""

    flash_attn: bool
    flex_attention: bool
    compiler: bool


@dataclass(frozen=True)
class AttentionPlan:
    implementation: str
    padding_free: bool
    why: str


def choose(packing: bool, padding_free: bool, on: str, have: Available) -> AttentionPlan:
    """The attention kernel and batch layout for a run (pure: the decision the tests check)."""
    if not packing:
        return AttentionPlan(SDPA, False, "no packing: padded batches with an attention mask")
    if not padding_free:
        return AttentionPlan(
            SDPA, False, "training.paddingFree is off: packed rows, block-diagonal mask"
        )
    if on != "cuda":
        return AttentionPlan(
            SDPA,
            False,
            "padding-free packing needs a GPU (flash-attn is CUDA only; torch's flex_attention "
            "has no backward on CPU): packed rows with a block-diagonal mask instead",
        )
    if have.flash_attn:
        return AttentionPlan(FLASH, True, "flash-attn installed: variable-length attention")
    if have.flex_attention and have.compiler:
        return AttentionPlan(FLEX, True, "flex_attention (block-sparse mask across examples)")
    missing = (
        "flex_attention needs torch >= 2.5"
        if not have.flex_attention
        else ("flex_attention needs a C compiler for torch.compile (none on PATH)")
    )
    return AttentionPlan(
        SDPA,
        False,
        f"neither flash-attn is installed nor can flex_attention run ({missing}): "
        "packed rows with a block-diagonal mask instead",
    )


def available() -> Available:
    from transformers.utils.import_utils import is_torch_flex_attn_available

    flash = importlib.util.find_spec("flash_attn") is not None
    # torch.compile (inductor, and triton's launcher on GPUs) builds with the C compiler that
    # CC names, else cc/gcc/clang from PATH.
    compilers = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    compiler = any(c and shutil.which(c) for c in compilers)
    return Available(
        flash_attn=flash, flex_attention=bool(is_torch_flex_attn_available()), compiler=compiler
    )


def plan(packing: bool, padding_free: bool, on: str) -> AttentionPlan:
    chosen = choose(packing, padding_free, on, available())
    log.info(
        "attention: %s, padding-free %s (%s)",
        chosen.implementation,
        chosen.padding_free,
        chosen.why,
    )
    return chosen


def is_varlen(model: object) -> bool:
    """Whether a loaded model's attention keeps flattened examples apart without a mask."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in (FLASH, FLEX)
