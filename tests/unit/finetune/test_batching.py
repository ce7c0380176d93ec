"""Split, packing, padding and step counting."""

from __future__ import annotations

from pathlib import Path

import pytest
from phiops_finetune import batching
from phiops_finetune.chat import IGNORE_INDEX, Encoded
from phiops_workload.finetune import TrainingSpec


def example(n: int, start: int = 10) -> Encoded:
    ids = list(range(start, start + n))
    return Encoded(input_ids=ids, labels=[IGNORE_INDEX] * (n // 2) + ids[n // 2 :])


def test_split_is_seeded_and_keeps_at_least_one_of_each() -> None:
    examples = [example(3, start=i * 10) for i in range(10)]
    train, val = batching.split(examples, 0.2, seed=1)
    assert (len(train), len(val)) == (8, 2)
    assert batching.split(examples, 0.2, seed=1) == (train, val)
    assert sorted(e.input_ids[0] for e in train + val) == [e.input_ids[0] for e in examples]
    assert len(batching.split(examples, 0.01, seed=1)[1]) == 1  # a split above 0 gives one
    assert batching.split(examples[:1], 0.5, seed=1) == (examples[:1], [])
    assert len(batching.split(examples[:2], 0.9, seed=1)[0]) == 1  # never all for validation
    assert batching.split(examples, 0.0, seed=1) == (examples, [])


def test_packing_fills_rows_without_cutting_examples() -> None:
    lengths = [60, 10, 30, 30, 5, 64, 20, 40, 3]
    bins = batching.pack_indices(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) == -(-sum(lengths) // 64) == 5  # the lower bound
    assert batching.pack_indices(lengths, 64) == bins

    rows = batching.rows([example(n) for n in (5, 3, 4)], packing=True, max_seq_length=8)
    assert [len(r) for r in rows] == [8, 4]
    assert rows[0].position_ids == [0, 1, 2, 3, 4, 0, 1, 2]


@pytest.mark.parametrize(
    ("rows", "training", "steps"),
    [
        (18, {"batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 2}, 6),
        (16, {"batch_size": 4, "gradient_accumulation_steps": 4, "epochs": 1}, 1),
        (3, {"batch_size": 4, "gradient_accumulation_steps": 4, "epochs": 3}, 3),
        (100, {"batch_size": 8, "gradient_accumulation_steps": 1, "epochs": 0.5}, 7),
        (100, {"batch_size": 8, "max_steps": 42}, 42),
    ],
)
def test_total_steps(rows: int, training: dict[str, float], steps: int) -> None:
    assert batching.total_steps(rows, TrainingSpec.model_validate(training)) == steps


def test_collator_pads_and_counts_real_tokens() -> None:
    rows = batching.rows([example(5), example(3)], packing=False, max_seq_length=8)
    batch = batching.Collator(pad_token_id=0, packed=False, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum().item() == 8 == batch[batching.TOKENS_KEY].item()
    assert (batch["labels"][1, 3:] == IGNORE_INDEX).all()
    assert "position_ids" not in batch

    packed = batching.rows([example(5), example(2), example(6)], packing=True, max_seq_length=8)
    batch = batching.Collator(pad_token_id=0, packed=True)(packed)
    assert "attention_mask" not in batch
    assert batch[batching.TOKENS_KEY].item() == 13
    # The padding tail restarts its positions: a sequence of its own, attending to nothing else.
    assert [len(r) for r in packed] == [8, 5]  # 6+2, then 5
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_packed_examples_do_not_see_each_other(tiny_model: Path) -> None:
    """Logits of two examples packed in one row equal their logits run alone: transformers
    builds a block-diagonal mask from the position ids (no cache, no attention mask)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train(False)
    a, b = example(7, start=20), example(9, start=200)
    (row,) = batching.rows([a, b], packing=True, max_seq_length=16)
    batch = batching.Collator(pad_token_id=0, packed=True)([row])
    batch.pop(batching.TOKENS_KEY)
    batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch).logits[0]
        alone_b = model(input_ids=torch.tensor([b.input_ids])).logits[0]
        alone_a = model(input_ids=torch.tensor([a.input_ids])).logits[0]
    first = 9 if row.input_ids[0] == 200 else 7  # best-fit puts the longer one first
    alone_first, alone_second = (alone_b, alone_a) if first == 9 else (alone_a, alone_b)
    torch.testing.assert_close(packed[:first], alone_first, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[first:], alone_second, atol=1e-5, rtol=1e-4)
