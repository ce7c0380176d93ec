"""Padding-free packing: packed examples train exactly as they would alone.

Per-example losses (and LoRA gradients) of a packed, flattened batch on the tiny Phi-3 equal
those of each example run by itself; naive packing (the same tokens, positions running on
across examples) does not. The kernel choice is pure logic, tested on its own.
"""

from __future__ import annotations

import itertools
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from phiops_finetune import attention, batching
from phiops_finetune.chat import IGNORE_INDEX, Encoded

LENGTHS = [23, 7, 41, 12, 30, 9]
TOLERANCE = 1e-4


def examples(vocab: int) -> list[Encoded]:
    rng = random.Random(5)
    out = []
    for n in LENGTHS:
        ids = [rng.randrange(8, vocab) for _ in range(n)]
        # Every token a target (the first too): a boundary leak in the loss would show.
        out.append(Encoded(input_ids=ids, labels=list(ids)))
    return out


def load(tiny_model: Path, implementation: str) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=implementation)
    model.config.use_cache = False
    return model


def token_losses(logits: Any, labels: Any) -> Any:
    """Cross-entropy of each next-token prediction (0 where the label is ignored)."""
    import torch

    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none"
    )


def alone(model: Any, ex: list[Encoded]) -> list[Any]:
    import torch

    return [
        token_losses(model(input_ids=torch.tensor([e.input_ids])).logits, torch.tensor([e.labels]))
        .sum()
        .reshape(())
        for e in ex
    ]


def per_example(losses: Any, positions: list[int]) -> list[Any]:
    """Sum the flattened row's token losses over each example (a position 0 starts one)."""
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return [losses[0, a:b].sum() for a, b in itertools.pairwise(starts)]


def packed_batch(ex: list[Encoded]) -> tuple[dict[str, Any], list[int], list[int]]:
    """The flattened batch, its position ids, and which example each packed segment is."""
    rows = batching.rows(ex, packing=True, max_seq_length=64)
    assert len(rows) > 1 and all(len(r) <= 64 for r in rows)
    batch = batching.Collator(pad_token_id=0, packed=True, flatten=True)(rows)
    positions = [p for r in rows for p in r.position_ids]
    order = [i for members in batching.pack_indices(LENGTHS, 64) for i in members]
    return batch, positions, order


def test_flattened_batch_has_no_padding_and_restarts_positions() -> None:
    ex = examples(1024)
    batch, positions, _ = packed_batch(ex)
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    assert int(batch[batching.TOKENS_KEY]) == sum(LENGTHS)
    assert "attention_mask" not in batch
    assert positions.count(0) == len(LENGTHS)
    # The first token of each example is not scored as the continuation of the one before.
    labels = batch["labels"][0].tolist()
    assert [labels[i] for i, p in enumerate(positions) if p == 0] == [IGNORE_INDEX] * len(ex)


@pytest.mark.parametrize(
    "implementation",
    [
        attention.SDPA,
        pytest.param(
            attention.FLEX,
            marks=pytest.mark.skipif(
                shutil.which("cc") is None, reason="flex_attention compiles: needs a C compiler"
            ),
        ),
    ],
)
def test_packed_losses_equal_unpacked_and_naive_packing_differs(
    tiny_model: Path, implementation: str
) -> None:
    """sdpa (the block-diagonal mask transformers builds from the position ids) and
    flex_attention (forward only on CPU: torch has no CPU backward for it)."""
    import torch

    model = load(tiny_model, implementation)
    ex = examples(model.config.vocab_size)
    batch, positions, order = packed_batch(ex)
    with torch.no_grad():
        reference = [alone(model, ex)[i] for i in order]
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        packed = per_example(token_losses(logits, batch["labels"]), positions)
        naive_logits = model(input_ids=batch["input_ids"]).logits  # positions 0..N-1, no bounds
        naive = per_example(token_losses(naive_logits, batch["labels"]), positions)
    for i, (want, got) in enumerate(zip(reference, packed, strict=True)):
        assert abs(float(got) - float(want)) <= TOLERANCE * max(1.0, abs(float(want))), i
    # Every example after the first sees the ones before it when packed naively.
    leaks = [abs(float(b) - float(a)) for a, b in zip(reference[1:], naive[1:], strict=False)]
    assert min(leaks) > 1e-2, leaks


def test_packed_lora_gradients_equal_unpacked(tiny_model: Path) -> None:
    """Training sees the same gradients: LoRA's, of the summed loss, packed vs one by one."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        load(tiny_model, attention.SDPA),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False
        ),
    )
    ex = examples(model.config.vocab_size)

    def grads() -> dict[str, Any]:
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return out

    torch.stack(alone(model, ex)).sum().backward()
    one_by_one = grads()
    batch, _, _ = packed_batch(ex)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    token_losses(logits, batch["labels"]).sum().backward()
    packed = grads()
    assert one_by_one.keys() == packed.keys() and len(packed) > 0
    for name, grad in one_by_one.items():
        torch.testing.assert_close(packed[name], grad, rtol=1e-4, atol=1e-5, msg=name)


HAVE_ALL = attention.Available(flash_attn=True, flex_attention=True, compiler=True)
HAVE_FLEX = attention.Available(flash_attn=False, flex_attention=True, compiler=True)
NO_COMPILER = attention.Available(flash_attn=False, flex_attention=True, compiler=False)


@pytest.mark.parametrize(
    ("packing", "padding_free", "on", "have", "kernel", "flat"),
    [
        (True, True, "cuda", HAVE_ALL, attention.FLASH, True),
        (True, True, "cuda", HAVE_FLEX, attention.FLEX, True),
        (True, True, "cuda", NO_COMPILER, attention.SDPA, False),
        (True, True, "cpu", HAVE_ALL, attention.SDPA, False),  # no CPU backward for flex
        (True, False, "cuda", HAVE_ALL, attention.SDPA, False),  # switched off
        (False, True, "cuda", HAVE_ALL, attention.SDPA, False),  # nothing packed
    ],
)
def test_kernel_choice(
    packing: bool, padding_free: bool, on: str, have: attention.Available, kernel: str, flat: bool
) -> None:
    chosen = attention.choose(packing, padding_free, on, have)
    assert (chosen.implementation, chosen.padding_free) == (kernel, flat)
    assert chosen.why


def test_no_compiler_is_named_in_the_reason() -> None:
    assert "C compiler" in attention.choose(True, True, "cuda", NO_COMPILER).why
