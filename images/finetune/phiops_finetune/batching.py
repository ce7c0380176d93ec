"""From encoded examples to batches: the validation split, packing, padding, and how many
optimizer steps a run takes (the pre-flight's `total_steps` and the Trainer's agree).

Packing puts several examples into one row of at most `max_seq_length` tokens (best-fit
decreasing: no example is cut). Each example keeps its own position ids starting at 0, and the
batch carries no attention mask: the attention kernel keeps examples apart from the position
ids (see attention.py): a block-diagonal mask transformers builds (padded rows, `sdpa`), or
variable-length attention over one flattened row with no padding at all (padding-free). The
first token of each packed example is never a target: in an example of its own no position
predicts it, and packed it would be scored as the continuation of the example before it.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phiops_workload.finetune import TrainingSpec

from phiops_finetune.chat import IGNORE_INDEX, Encoded

if TYPE_CHECKING:
    import torch

# Key of the non-padding token count a batch carries to the trainer (popped before forward).
TOKENS_KEY = "phiops_tokens"


@dataclass(frozen=True)
class Row:
    """One training sequence: an example, or several packed ones."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def split(
    examples: Sequence[Encoded], validation_split: float, seed: int
) -> tuple[list[Encoded], list[Encoded]]:
    """A seeded shuffle, then the first `validation_split` share (at least one example when
    the split is above 0, never all of them) for validation."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = 0
    if validation_split > 0 and len(examples) >= 2:
        n_val = min(max(1, int(len(examples) * validation_split)), len(examples) - 1)
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    return train, val


def pack_indices(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each example (longest first) goes into the open bin with the least
    room that still fits it. Deterministic; bins keep their examples in insertion order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        size = lengths[i]
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - size, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - size, len(bins) - 1))
    return bins


def rows(examples: Sequence[Encoded], packing: bool, max_seq_length: int) -> list[Row]:
    if not packing:
        return [Row(e.input_ids, e.labels, list(range(len(e)))) for e in examples]
    packed: list[Row] = []
    for members in pack_indices([len(e) for e in examples], max_seq_length):
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            ids += examples[i].input_ids
            labels += [IGNORE_INDEX, *examples[i].labels[1:]]
            positions += range(len(examples[i]))
        packed.append(Row(ids, labels, positions))
    return packed


def total_steps(train_rows: int, training: TrainingSpec, processes: int = 1) -> int:
    """Optimizer steps of a run, computed as the HF Trainer does: batches per epoch (with N
    processes each takes every Nth batch, the last ones evened out: rounded up) rounded up to
    whole accumulation groups (at least one), times epochs, rounded up; or `max_steps`."""
    if training.max_steps is not None and training.max_steps > 0:
        return training.max_steps
    batches = math.ceil(math.ceil(train_rows / training.batch_size) / max(processes, 1))
    ga = training.gradient_accumulation_steps
    per_epoch = max(batches // ga + int(batches % ga > 0), 1)
    return math.ceil(training.epochs * per_epoch)


class RowDataset:
    """A map-style dataset the Trainer's DataLoader can index."""

    def __init__(self, items: Sequence[Row]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Row:
        return self.items[index]


class Collator:
    """Pads a batch of rows to its longest (right padding, labels `IGNORE_INDEX`).

    Padded (not packed) batches carry an attention mask. Packed batches carry position ids
    and no mask; their padding tail gets positions of its own, so it is a separate (ignored)
    sequence in the block-diagonal mask. Padding-free batches (`flatten`) are one row of all
    the batch's tokens with their position ids: no padding, no mask.
    """

    def __init__(
        self, pad_token_id: int, packed: bool, pad_to_multiple_of: int = 1, flatten: bool = False
    ) -> None:
        self.pad_token_id = pad_token_id
        self.packed = packed or flatten
        self.flatten = flatten
        self.multiple = max(1, pad_to_multiple_of)

    def __call__(self, batch: Sequence[Row]) -> dict[str, Any]:
        import torch

        if self.flatten:
            return flattened(batch)
        width = max(len(r) for r in batch)
        width = math.ceil(width / self.multiple) * self.multiple
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, row in enumerate(batch):
            n = len(row)
            ids[b, :n] = torch.tensor(row.input_ids)
            labels[b, :n] = torch.tensor(row.labels)
            positions[b, :n] = torch.tensor(row.position_ids)
            positions[b, n:] = torch.arange(width - n)
            mask[b, :n] = 1
        out: dict[str, torch.Tensor] = {"input_ids": ids, "labels": labels}
        if self.packed:
            out["position_ids"] = positions
        else:
            out["attention_mask"] = mask
        out[TOKENS_KEY] = mask.sum()
        return out


def flattened(batch: Sequence[Row]) -> dict[str, Any]:
    """One row of every token of the batch, position ids restarting per example."""
    import torch

    ids = [t for r in batch for t in r.input_ids]
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([[t for r in batch for t in r.labels]], dtype=torch.long),
        "position_ids": torch.tensor([[p for r in batch for p in r.position_ids]]),
        TOKENS_KEY: torch.tensor(len(ids)),
    }
